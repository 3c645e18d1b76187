"""The workload options the one-process benchmarks share (imported from beside them: run them as scripts)."""


def add_workload(parser) -> None:
    """--model, --recipe, --size and --steps, each with the test model's small default."""
    parser.add_argument("--model", default="random:tiny")
    parser.add_argument("--recipe", default="baseline")
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--steps", type=int, default=4)
