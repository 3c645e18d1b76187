"""`sdcpu report DIR`: make a bench folder's report.md, ladder.png and report.html again from its results.jsonl;
`sdcpu report --compare DIR_A DIR_B` shows two runs side by side."""

from pathlib import Path

from sdcpu.errors import UsageError


def register(sub):
    p = sub.add_parser("report", help="(re)make a bench report, or compare two bench runs", description=__doc__)
    p.add_argument("folders", nargs="+", type=Path, metavar="DIR")
    p.add_argument("--compare", action="store_true", help="two folders: their rungs side by side")
    p.set_defaults(func=run)


def run(args) -> int:
    from sdcpu.bench import report

    if len(args.folders) != (2 if args.compare else 1):
        raise UsageError("give one bench folder, or --compare with two")
    try:
        runs = [report.load(folder) for folder in args.folders]
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    if args.compare:
        print(report.compare(*runs, names=tuple(str(folder) for folder in args.folders)))
        return 0
    for path in report.write(args.folders[0]):
        print(f"wrote {path}")
    return 0
