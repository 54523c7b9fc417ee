"""Check a fetched data set row by row and write what its stage reads, saying what was left out and why.

The same code prepares the authors' downloads and tiny mode's synthetic sets:
- sft: sharegpt multimodal conversations (`messages` role/content or `conversations` from/value) from every
  json / jsonl / parquet file of the download -> `prism_sft.jsonl` + `dataset_info.json` for LLaMA-Factory;
- warmup: the pairwise jsonl -> `warmup_pairwise.jsonl`;
- align / rl: verl parquets -> `train.parquet` (the align set also needs the teacher's two segments).
A row that would fail later (image count vs. `<image>` placeholders, empty answer, unreadable image, ...)
is rejected and counted by reason; more than `max_rejected_fraction` rejected stops the job, because that
many means a format mismatch rather than a few broken examples.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

from prism.core.manifest import MANIFEST
from prism.core.prompts import IMAGE_PLACEHOLDER
from prism.data.formats import ALIGN_COLUMNS, RL_COLUMNS, WARMUP_FIELDS, DataError

SFT_FILE = "prism_sft.jsonl"
SFT_DATASET = "prism_sft"
SHAREGPT_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}
LEGACY_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


class Rejected(Exception):
    """One row that its stage could not use; the message is the reason it is counted under."""


class Tally:
    """Rows read and kept, and the rejected ones by reason, with the first place each reason was seen."""

    def __init__(self) -> None:
        self.read = 0
        self.kept = 0
        self.reasons: Counter[str] = Counter()
        self.first_seen: dict[str, str] = {}

    def check(self, where: str, row, validate: Callable):
        """`validate(row)` returns the row to keep or raises Rejected."""
        self.read += 1
        try:
            kept = validate(row)
        except Rejected as reason:
            self.reasons[str(reason)] += 1
            self.first_seen.setdefault(str(reason), where)
            return None
        self.kept += 1
        return kept

    def report(self) -> dict:
        return {
            "read": self.read,
            "kept": self.kept,
            "rejected": dict(self.reasons.most_common()),
            "first_rejected_at": self.first_seen,
        }

    def enforce(self, name: str, max_rejected_fraction: float) -> None:
        if self.kept == 0:
            raise DataError(f"{name}: none of the {self.read} rows is usable ({self.summary()})")
        if self.read - self.kept > max_rejected_fraction * self.read:
            raise DataError(
                f"{name}: {self.read - self.kept} of {self.read} rows rejected, more than "
                f"data.max_rejected_fraction={max_rejected_fraction} ({self.summary()}); "
                "this many usually means the files are not in the expected format"
            )

    def summary(self) -> str:
        return "; ".join(f"{n} {reason}" for reason, n in self.reasons.most_common()) or "none rejected"


def data_files(raw: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """A fetched set's data files: in a folder with a dataset_info.json (a repo's own, or a part's), the
    files it registers; elsewhere every file of these kinds."""
    fetched = [p for p in raw.rglob("*") if p.is_file() and ".cache" not in p.relative_to(raw).parts]
    registries = [p for p in fetched if p.name == "dataset_info.json"]
    registered = {p.parent for p in registries}
    files = {
        registry.parent / entry["file_name"]
        for registry in registries
        for entry in json.loads(registry.read_text()).values()
        if "file_name" in entry
    }
    files |= {
        p
        for p in fetched
        if p.suffix in suffixes
        and p.name not in (MANIFEST, "dataset_info.json")
        and not registered.intersection(p.parents)
    }
    files = sorted(files)
    if not files:
        raise DataError(f"{raw}: no {' / '.join(suffixes)} data files found")
    return files


def read_table(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: cannot read parquet ({err})") from None


def records(path: Path, table=None) -> Iterator[tuple[str, object]]:
    """(where, record) for each row of a json array, jsonl or parquet file (`table`: already read); a bad
    jsonl line is a row."""
    if path.suffix == ".parquet":
        for i, record in enumerate((read_table(path) if table is None else table).to_pylist()):
            yield f"{path.name} row {i}", record
        return
    text = path.read_text()
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
        for i, record in enumerate(rows if isinstance(rows, list) else [rows]):
            yield f"{path.name} example {i}", record
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield f"{path.name}:{number}", line


def placeholders(texts) -> int:
    return sum(str(t).count(IMAGE_PLACEHOLDER) for t in texts)


def checked_image(item, bases: tuple[Path, ...] = ()) -> Image.Image | Path:
    """An image given by bytes (decoded) or by a path, relative paths tried under each base (header read)."""
    data = item.get("bytes") if isinstance(item, dict) else item
    if isinstance(data, bytes | bytearray):
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception:
            raise Rejected("unreadable image") from None
        return image
    path = item.get("path") if isinstance(item, dict) else item
    if not isinstance(path, str) or not path:
        raise Rejected("image is neither bytes nor a path")
    candidates = [Path(path)] if os.path.isabs(path) else [base / path for base in bases]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise Rejected("image file missing")
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 -- reading the header is the check
    except Exception:
        raise Rejected("unreadable image") from None
    return path


def json_object(record) -> dict:
    """A row as a dict: jsonl lines arrive as text and are parsed here, so a bad line is one rejected row."""
    if isinstance(record, str):
        try:
            record = json.loads(record)
        except json.JSONDecodeError:
            raise Rejected("not valid JSON") from None
    if not isinstance(record, dict):
        raise Rejected("not a JSON object")
    return record


def conversation(record: dict) -> list[dict]:
    """sharegpt turns as role/content messages (`messages`), or from/value ones (`conversations`)."""
    if as_list(record.get("messages")):
        messages = as_list(record["messages"])
        turns = [(m.get("role"), m.get("content")) for m in messages if isinstance(m, dict)]
    elif as_list(record.get("conversations")):
        turns = [
            (LEGACY_ROLES.get(m.get("from"), m.get("from")), m.get("value"))
            for m in as_list(record["conversations"])
            if isinstance(m, dict)
        ]
    else:
        raise Rejected("no messages or conversations")
    messages = [{"role": role, "content": content} for role, content in turns]
    if messages and messages[0]["role"] == "system":
        messages = messages[1:]
    roles = [m["role"] for m in messages]
    if not roles or roles != ["user", "assistant"] * (len(roles) // 2) or len(roles) % 2:
        raise Rejected("turns do not alternate user / assistant")
    if any(not isinstance(m["content"], str) for m in messages):
        raise Rejected("a turn's content is not text")
    if not messages[-1]["content"].strip():
        raise Rejected("empty assistant reply")
    system = [{"role": "system", "content": turns[0][1]}] if turns[0][0] == "system" else []
    return system + messages


def sft_example(record, bases: tuple[Path, ...], out: Path, written: Counter) -> dict:
    """One conversation with its images as paths relative to `out` (LLaMA-Factory's media_dir)."""
    record = json_object(record)
    messages = conversation(record)
    images = as_list(record.get("images"))
    if len(images) != placeholders(m["content"] for m in messages):
        raise Rejected("images ≠ <image> placeholders")
    paths = []
    for item in images:
        image = checked_image(item, bases)
        if isinstance(image, Image.Image):  # embedded bytes: LLaMA-Factory reads files, so write one
            written["images"] += 1
            path = out / "images" / f"{written['images']:08d}.png"
            path.parent.mkdir(exist_ok=True)
            image.convert("RGB").save(path)
            image = path
        paths.append(os.path.relpath(image, out))
    return {"messages": messages, "images": paths}


def register_sft(directory: Path, file_name: str) -> None:
    """LLaMA-Factory's dataset_info.json naming `file_name` as the sharegpt multimodal set prism_sft."""
    entry = {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": SHAREGPT_TAGS,
    }
    (directory / "dataset_info.json").write_text(json.dumps({SFT_DATASET: entry}, indent=2))


def prepare_sft(raw: Path, out: Path, tally: Tally, parts: list[str] = ()) -> dict:
    """The whole set, or only its `parts` (the folders of a set fetched from several repos)."""
    roots = [raw / part for part in parts] or [raw]
    absent = [root.name for root in roots if not root.is_dir()]
    if absent:
        found = sorted(d.name for d in raw.iterdir() if d.is_dir() and d.name != ".cache")
        raise DataError(f"{raw}: no part {absent}; its parts are {found}")
    written: Counter = Counter()
    with open(out / SFT_FILE, "w") as sink:
        for root in roots:
            for source in data_files(root, (".json", ".jsonl", ".parquet")):
                bases = (source.parent, root)  # relative image paths: beside the data file, else the root
                for where, record in records(source):
                    kept = tally.check(where, record, lambda r, b=bases: sft_example(r, b, out, written))
                    if kept:
                        sink.write(json.dumps(kept, ensure_ascii=False) + "\n")
    register_sft(out, SFT_FILE)
    return {"dataset": SFT_DATASET, "file": SFT_FILE, "parts": list(parts)}


def warmup_pair(record, source: Path, out: Path) -> dict:
    record = json_object(record)
    record = dict(record, prompt=record.get("prompt") or record.get("question"))
    texts = [field for field in WARMUP_FIELDS if field != "image"]
    empty = [field for field in texts if not str(record.get(field) or "").strip()]
    if empty:
        raise Rejected(f"empty {' / '.join(empty)}")
    if not record.get("image"):
        raise Rejected("no image")
    image = checked_image(record["image"], (source.parent,))
    if isinstance(image, Image.Image):
        raise Rejected("image is not a path")
    return {field: record[field] for field in WARMUP_FIELDS} | {"image": os.path.relpath(image, out)}


def prepare_warmup(raw: Path, out: Path, tally: Tally) -> dict:
    with open(out / "warmup_pairwise.jsonl", "w") as sink:
        for source in data_files(raw, (".jsonl",)):
            for where, line in records(source):
                kept = tally.check(where, line, lambda r, source=source: warmup_pair(r, source, out))
                if kept:
                    sink.write(json.dumps(kept, ensure_ascii=False) + "\n")
    return {"file": "warmup_pairwise.jsonl"}


class TeacherLength:
    """The check the reference meant to make and did not (method-reference B6): a teacher whose caption and
    reasoning together take more than `max_tokens` tokens (the policy's response budget) under any of the
    policies' tokenizers is a target no rollout can reach; such a row is left out and counted, never
    truncated."""

    def __init__(self, max_tokens: int, tokenizer_dirs: list[str]):
        from transformers import AutoTokenizer

        if not tokenizer_dirs:
            raise DataError("teacher_tokens: no tokenizer to count the teacher's tokens with")
        self.max_tokens = max_tokens
        self.tokenizers = [AutoTokenizer.from_pretrained(path) for path in tokenizer_dirs]

    def check(self, record: dict) -> None:
        texts = [str(record["teacher_caption"]), str(record["teacher_cot"])]
        longest = max(
            sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
            for tokenizer in self.tokenizers
        )
        if longest > self.max_tokens:
            raise Rejected(f"teacher caption + reasoning over max_response_length={self.max_tokens} tokens")


def verl_row(record: dict, teacher: bool, teacher_length: TeacherLength | None = None) -> dict:
    prompt = as_list(record["prompt"])
    if not any(isinstance(m, dict) and m.get("role") == "user" for m in prompt):
        raise Rejected("prompt is not a chat list with a user turn")
    images = as_list(record["images"])
    if len(images) != placeholders(m.get("content", "") for m in prompt if isinstance(m, dict)):
        raise Rejected("images ≠ <image> placeholders")
    for item in images:
        if not isinstance(checked_image(item), Image.Image):
            raise Rejected("image is not embedded bytes")
    truth = (record.get("reward_model") or {}).get("ground_truth")
    if truth is None or not str(truth).strip():
        raise Rejected("empty answer")
    if teacher:
        for column, what in (("teacher_caption", "teacher caption"), ("teacher_cot", "teacher reasoning")):
            if not str(record.get(column) or "").strip():
                raise Rejected(f"empty {what}")
        if teacher_length is not None:
            teacher_length.check(record)
    return record


def as_list(value) -> list:
    """A list cell as a list; anything else (None, a string, a mapping) as an empty one."""
    if value is None or isinstance(value, str | bytes | dict):
        return []
    return list(value)


def prepare_parquet(
    raw: Path, out: Path, tally: Tally, columns: tuple[str, ...], teacher_length: TeacherLength | None = None
) -> dict:
    """The kept rows of every parquet, taken from the Arrow tables so that types survive unchanged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for source in data_files(raw, (".parquet",)):
        table = read_table(source)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise DataError(f"{source}: missing columns {missing}; has {table.column_names}")
        kept = [
            i
            for i, (where, record) in enumerate(records(source, table))
            if tally.check(where, record, lambda r: verl_row(r, columns == ALIGN_COLUMNS, teacher_length))
            is not None
        ]
        tables.append(equivalents_in_extra_info(table.take(kept)))
    pq.write_table(pa.concat_tables(tables, promote_options="default"), out / "train.parquet")
    return {"file": "train.parquet"}


def equivalents_in_extra_info(table):
    """verl hands a custom reward function a row's `extra_info`, not its `reward_model`, so the reference's
    `reward_model.equivalent_answers` (`__EMPTY__`: none) are copied into `extra_info` for the reward."""
    import pyarrow as pa

    reward_model = table.schema.field("reward_model").type
    if not pa.types.is_struct(reward_model) or reward_model.get_field_index("equivalent_answers") < 0:
        return table

    def listed(value) -> list[str]:
        values = [value] if isinstance(value, str) else list(value or [])
        return [str(v) for v in values if str(v).strip() and str(v) != "__EMPTY__"]

    models, infos = table.column("reward_model").to_pylist(), table.column("extra_info").to_pylist()
    extra = [
        dict(info or {}, equivalent_answers=listed((model or {}).get("equivalent_answers")))
        for model, info in zip(models, infos, strict=True)
    ]
    return table.set_column(table.schema.get_field_index("extra_info"), "extra_info", pa.array(extra))


def teacher_length(spec: dict) -> TeacherLength | None:
    return TeacherLength(**spec["teacher_tokens"]) if "teacher_tokens" in spec else None


PREPARERS = {
    "sft": lambda raw, out, tally, spec: prepare_sft(raw, out, tally, spec.get("parts", [])),
    "warmup": lambda raw, out, tally, spec: prepare_warmup(raw, out, tally),
    "align": lambda raw, out, tally, spec: prepare_parquet(
        raw, out, tally, ALIGN_COLUMNS, teacher_length(spec)
    ),
    "rl": lambda raw, out, tally, spec: prepare_parquet(raw, out, tally, RL_COLUMNS),
}


def prepare(name: str, raw: Path, out: Path, max_rejected_fraction: float, spec: dict | None = None) -> dict:
    """Write the prepared set into `out` and return its report; raise DataError if it is unusable. `spec`:
    for SFT, the `parts` to prepare (the whole set without); for the align set, `teacher_tokens`
    ({max_tokens, tokenizer_dirs}: the teacher segments' length check)."""
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    spec = spec or {}
    if spec.get("parts") and name != "sft":
        raise DataError(f"only the SFT set is prepared in parts, not {name!r}")
    facts = PREPARERS[name](raw, out, tally, spec)
    tally.enforce(name, max_rejected_fraction)
    return {**facts, **tally.report()}
