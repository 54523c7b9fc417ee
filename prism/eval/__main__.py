"""Evaluate one model on every configured benchmark:
`python -m prism.eval --config JSON --model DIR --data BENCH_DIR --out DIR --work DIR`."""

from prism.core.training import stage_parser, unavailable_engine


def main(argv=None) -> None:
    args = stage_parser("python -m prism.eval", __doc__, ("model", "data")).parse_args(argv)
    if args.config["engine"] != "cpu":
        unavailable_engine("eval", args.config["engine"], 7)
    from prism.eval import cpu

    cpu.run(args)


if __name__ == "__main__":
    main()
