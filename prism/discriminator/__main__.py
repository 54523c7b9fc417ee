"""Discriminator stages: `python -m prism.discriminator {upcycle,warmup} ...`."""

import sys

from prism.core.training import stage_parser, unavailable_engine


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("upcycle", "warmup"):
        sys.exit("usage: python -m prism.discriminator {upcycle,warmup} --config JSON ...")
    step, rest = argv[0], argv[1:]
    if step == "upcycle":
        from prism.discriminator.stages import upcycle_stage

        upcycle_stage(stage_parser("prism.discriminator upcycle", __doc__, ("model",)).parse_args(rest))
        return
    args = stage_parser("prism.discriminator warmup", __doc__, ("model", "data")).parse_args(rest)
    if args.config["warmup"]["engine"] != "cpu":
        unavailable_engine("discriminator.warmup", args.config["warmup"]["engine"], 3)
    from prism.discriminator.stages import warmup_stage

    warmup_stage(args)


if __name__ == "__main__":
    main()
