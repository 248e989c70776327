//! The blocking CRI client: tonic on a current-thread tokio runtime, over containerd's Unix
//! socket. Every call is bounded ([`CriClient::set_timeout`]), both on the gRPC request
//! (`grpc-timeout`, which containerd honours) and locally.

use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{
    ContainerConfig, ContainerState, ContainerStats, ContainerStatus, ExecSyncResponse,
    PodSandboxConfig,
};

/// A blocking CRI client (runtime and image services) over a Unix socket.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
    timeout: Cell<Duration>,
}

/// A gRPC status or a timeout, as text.
fn status_err(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("CRI {what}: {:?}: {}", s.code(), s.message())
}

impl CriClient {
    /// Connects to the CRI gRPC server on `socket`. Calls are bounded by 60 s unless
    /// [`CriClient::set_timeout`] says otherwise.
    pub fn connect(socket: &Path) -> Result<CriClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = socket.to_path_buf();
        let channel = rt.block_on(async move {
            // The URI is not used: every connection goes to the socket.
            Endpoint::try_from("http://[::1]:1")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }))
                .await
        })?;
        Ok(CriClient {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
            timeout: Cell::new(Duration::from_secs(60)),
        })
    }

    /// The bound on each call (a VM pod's calls take tens of seconds on KVM-PVM).
    pub fn set_timeout(&self, t: Duration) {
        self.timeout.set(t);
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.get()
    }

    fn block<T, Fut>(&self, what: &str, extra: Duration, fut: Fut) -> Result<T>
    where
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let t = self.timeout.get() + extra;
        match self
            .rt
            .block_on(async { tokio::time::timeout(t, fut).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(status_err(what, s)),
            Err(_) => Err(anyhow!("CRI {what}: no answer in {t:?}")),
        }
    }

    fn req<M>(&self, msg: M, extra: Duration) -> tonic::Request<M> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout.get() + extra);
        r
    }

    fn rs(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    pub fn version(&self) -> Result<cri::VersionResponse> {
        let r = self.req(cri::VersionRequest::default(), Duration::ZERO);
        self.block("Version", Duration::ZERO, self.rs().version(r))
    }

    pub fn status(&self) -> Result<cri::StatusResponse> {
        let r = self.req(cri::StatusRequest { verbose: false }, Duration::ZERO);
        self.block("Status", Duration::ZERO, self.rs().status(r))
    }

    /// The image's status, `None` while the CRI plugin does not know it.
    pub fn image_status(&self, image: &str) -> Result<Option<cri::Image>> {
        let msg = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        let r = self.req(msg, Duration::ZERO);
        let mut c = self.image.clone();
        Ok(self
            .block("ImageStatus", Duration::ZERO, c.image_status(r))?
            .image)
    }

    /// RunPodSandbox; the sandbox id.
    pub fn run_pod_sandbox(&self, config: &PodSandboxConfig, handler: &str) -> Result<String> {
        let msg = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let r = self.req(msg, Duration::ZERO);
        Ok(self
            .block(
                "RunPodSandbox",
                Duration::ZERO,
                self.rs().run_pod_sandbox(r),
            )?
            .pod_sandbox_id)
    }

    pub fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::PodSandboxStatusResponse> {
        let msg = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose,
        };
        let r = self.req(msg, Duration::ZERO);
        self.block(
            "PodSandboxStatus",
            Duration::ZERO,
            self.rs().pod_sandbox_status(r),
        )
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let msg = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        let r = self.req(msg, Duration::ZERO);
        self.block(
            "StopPodSandbox",
            Duration::ZERO,
            self.rs().stop_pod_sandbox(r),
        )
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let msg = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        let r = self.req(msg, Duration::ZERO);
        self.block(
            "RemovePodSandbox",
            Duration::ZERO,
            self.rs().remove_pod_sandbox(r),
        )
        .map(drop)
    }

    pub fn list_pod_sandbox(&self) -> Result<Vec<cri::PodSandbox>> {
        let r = self.req(cri::ListPodSandboxRequest { filter: None }, Duration::ZERO);
        Ok(self
            .block(
                "ListPodSandbox",
                Duration::ZERO,
                self.rs().list_pod_sandbox(r),
            )?
            .items)
    }

    /// CreateContainer; the container id.
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String> {
        let msg = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let r = self.req(msg, Duration::ZERO);
        Ok(self
            .block(
                "CreateContainer",
                Duration::ZERO,
                self.rs().create_container(r),
            )?
            .container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let msg = cri::StartContainerRequest {
            container_id: id.to_string(),
        };
        let r = self.req(msg, Duration::ZERO);
        self.block(
            "StartContainer",
            Duration::ZERO,
            self.rs().start_container(r),
        )
        .map(drop)
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let msg = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        let r = self.req(msg, Duration::ZERO);
        self.block(
            "ContainerStatus",
            Duration::ZERO,
            self.rs().container_status(r),
        )?
        .status
        .ok_or_else(|| anyhow!("ContainerStatus {id}: no status"))
    }

    /// ExecSync of `cmd` bounded by `timeout_s` (0: none) on the CRI side.
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_s: i64) -> Result<ExecSyncResponse> {
        let extra = Duration::from_secs(timeout_s.max(0) as u64);
        let msg = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        };
        let r = self.req(msg, extra);
        self.block("ExecSync", extra, self.rs().exec_sync(r))
    }

    pub fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        let msg = cri::ContainerStatsRequest {
            container_id: id.to_string(),
        };
        let r = self.req(msg, Duration::ZERO);
        self.block(
            "ContainerStats",
            Duration::ZERO,
            self.rs().container_stats(r),
        )?
        .stats
        .ok_or_else(|| anyhow!("ContainerStats {id}: no stats"))
    }

    /// StopContainer: SIGTERM, then SIGKILL after `timeout_s`.
    pub fn stop_container(&self, id: &str, timeout_s: i64) -> Result<()> {
        let extra = Duration::from_secs(timeout_s.max(0) as u64);
        let msg = cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: timeout_s,
        };
        let r = self.req(msg, extra);
        self.block("StopContainer", extra, self.rs().stop_container(r))
            .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let msg = cri::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        let r = self.req(msg, Duration::ZERO);
        self.block(
            "RemoveContainer",
            Duration::ZERO,
            self.rs().remove_container(r),
        )
        .map(drop)
    }

    /// ListContainers, of one pod or all.
    pub fn list_containers(&self, pod_id: Option<&str>) -> Result<Vec<cri::Container>> {
        let filter = pod_id.map(|p| cri::ContainerFilter {
            pod_sandbox_id: p.to_string(),
            ..Default::default()
        });
        let r = self.req(cri::ListContainersRequest { filter }, Duration::ZERO);
        Ok(self
            .block(
                "ListContainers",
                Duration::ZERO,
                self.rs().list_containers(r),
            )?
            .containers)
    }

    /// Polls ContainerStatus until the container has exited; its final status.
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> Result<ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.container_status(id)?;
            if s.state() == ContainerState::ContainerExited {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("container {id} still {:?} after {timeout:?}", s.state());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
