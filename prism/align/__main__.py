"""Stage 2 alignment: `python -m prism.align --config JSON --model SFT --disc DISC --data ALIGN ...`."""

from prism.core.training import stage_parser, unavailable_engine


def main(argv=None) -> None:
    args = stage_parser("python -m prism.align", __doc__, ("model", "disc", "data")).parse_args(argv)
    if args.config["engine"] != "cpu":
        unavailable_engine("align", args.config["engine"], 4)
    from prism.align import cpu

    cpu.run(args)


if __name__ == "__main__":
    main()
