"""Stage 3 RLVR: `python -m prism.rl --config JSON --model INIT --data RL --out DIR --work DIR`."""

from prism.core.training import stage_parser, unavailable_engine


def main(argv=None) -> None:
    args = stage_parser("python -m prism.rl", __doc__, ("model", "data")).parse_args(argv)
    if args.config["engine"] != "cpu":
        unavailable_engine("rl", args.config["engine"], 5)
    from prism.rl import cpu

    cpu.run(args)


if __name__ == "__main__":
    main()
