# The two commands of the README. Both set up a fresh Debian 12 machine by themselves (root).
.PHONY: demo test
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
