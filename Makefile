demo:
	./scripts/run.sh demo

test:
	./scripts/run.sh test

test-all:
	./scripts/run.sh test-all

.PHONY: demo test test-all
