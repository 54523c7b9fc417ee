"""Stage 1 SFT: `python -m prism.sft --config JSON --model BASE --data SFT_DATA --out DIR --work DIR`."""

from prism.core.training import stage_parser, unavailable_engine


def main(argv=None) -> None:
    args = stage_parser("python -m prism.sft", __doc__, ("model", "data")).parse_args(argv)
    if args.config["engine"] != "cpu":
        unavailable_engine("sft", args.config["engine"], 6)
    from prism.sft import cpu

    cpu.run(args)


if __name__ == "__main__":
    main()
