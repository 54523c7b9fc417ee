"""The RLVR reward: strict format gate, `<answer>` extraction, rule-based judge, math-verify fallback.

score = accuracy_weight * acc + format_weight * format (0.8 / 0.2 in the paper), method-reference §4.3.
No signal-based timeouts, so it is safe in threads and Ray workers.
"""

from __future__ import annotations

import functools
import logging
import re

from prism.core.segments import parse_response

MAX_ANSWER_CHARS = 1024
# math-verify warns on every call made without its signal timeouts, which we disable on purpose.
logging.getLogger("math_verify").setLevel(logging.ERROR)
_MCQ_GT = re.compile(r"^\(?([A-H])\)?(?:[.)]\s*.*|\s+.*)?$", re.DOTALL)
# The reference's units (mm_gad_no_llm's list, English and Chinese) and, beyond it, the bare SI letters and
# units written with an exponent or a ratio (cm^2, m/s, km/h), which its list scores as wrong answers.
_UNIT_WORDS = (
    "°C", "°F", "°", "%", "meters?", "metres?", "cm", "mm", "km", "dm", "m", "inch(?:es)?", "ft", "feet",
    "kg", "mg", "g", "lbs?", "pounds?", "seconds?", "sec", "s", "minutes?", "min", "hours?", "hr", "h",
    "days?", "years?", "plates?", "pieces?", "items?", "people", "persons?", "students?", "times?",
    "degrees?", "units?", "ml", "liters?", "litres?", "l",
    "元", "米", "厘米", "毫米", "分米", "千米", "公里", "千克", "克", "吨", "度", "个", "条", "张", "块",
    "人", "次", "秒", "分钟", "小时", "天", "年", "岁", "只", "本", "辆", "倍",
)  # fmt: skip
_UNIT = rf"(?:{'|'.join(sorted(_UNIT_WORDS, key=len, reverse=True))})(?:\^\{{?[23]\}}?|[²³])?"
# A unit closes the answer and follows a digit; case is ignored, as in the reference.
_UNIT_PATTERN = re.compile(rf"(?<=\d)\s*({_UNIT}(?:\s*/\s*{_UNIT})?)\s*$", re.IGNORECASE)
_COORDINATE = re.compile(r"\(?\s*([-+]?\d+(?:\.\d+)?)\s*,\s*([-+]?\d+(?:\.\d+)?)\s*\)?")
_INTEGER = re.compile(r"[-+]?\d+")
_LATEX_WRAPPERS = (("$$", "$$"), ("$", "$"), (r"\(", r"\)"), (r"\[", r"\]"))


def _strip_latex(text: str) -> str:
    text = text.strip()
    for left, right in _LATEX_WRAPPERS:
        if text.startswith(left) and text.endswith(right) and len(text) > len(left) + len(right):
            text = text[len(left) : -len(right)].strip()
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\(?:text|mathrm)\{([^{}]*)\}", r"\1", text)
    text = text.replace(r"\left", "").replace(r"\right", "")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text).replace("，", "")
    return re.sub(r"\s+", " ", text).strip().rstrip(".")


def _normalise_words(text: str) -> str:
    text = text.lower().replace("**", "").replace("*", "")
    text = re.sub(r"[^\w\s.]|_", " ", text)
    return re.sub(r"\s+", " ", text).strip().rstrip(".")


def _strip_unit(text: str) -> tuple[str, str]:
    """(text without its trailing unit, the unit in lower case without spaces); ("", "") parts if none."""
    match = _UNIT_PATTERN.search(text)
    if match is None:
        return text, ""
    return text[: match.start()].strip(), re.sub(r"\s+", "", match.group(1)).lower()


def _coordinates(text: str) -> list[tuple[float, float]] | None:
    pairs = [(float(x), float(y)) for x, y in _COORDINATE.findall(text)]
    return pairs or None


def _as_number(text: str) -> float | None:
    text, _ = _strip_unit(text)
    frac = re.fullmatch(r"\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}|(-?[\d.]+)\s*/\s*(-?[\d.]+)", text)
    try:
        if frac:
            num, den = (g for g in frac.groups() if g is not None)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


def _mcq_letter(prediction: str) -> str | None:
    bare = re.fullmatch(r"\(?([A-H])\)?\.?", prediction.strip())
    if bare:
        return bare.group(1)
    patterns = (  # (priority, pattern): an explicit phrase beats "(X)" beats "X." / "X)"
        (10, r"(?i:answer|option|choice)\s*(?:is|:)?\s*\(?([A-H])\b"),
        (8, r"\(([A-H])\)"),
        (6, r"\b([A-H])[.)]"),
    )
    found = [(-prio, m.start(), m.group(1)) for prio, p in patterns for m in re.finditer(p, prediction)]
    return min(found)[2] if found else None


def _split_values(text: str) -> list[str]:
    numbered = re.split(r"\(\d+\)\s*", text)
    if re.match(r"^\s*\(1\)", text[:3]) and len(numbered) > 2:
        return [p.strip(" ;,") for p in numbered if p.strip(" ;,")]
    for sep in (";", "；"):
        if sep in text:
            return [p.strip() for p in text.split(sep) if p.strip()]
    parts, depth, current = [], 0, ""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,234 is one number, not two values
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [p for p in [*parts, current.strip()] if p]


def _single_match(prediction: str, truth: str) -> bool:
    pred, gt = _strip_latex(prediction), _strip_latex(truth)
    pred_points, gt_points = _coordinates(pred), _coordinates(gt)
    if pred_points and gt_points:  # (x, y) pairs, elementwise to 1e-6, as the reference checks first
        return len(pred_points) == len(gt_points) and all(
            abs(p - g) <= 1e-6
            for pp, gp in zip(pred_points, gt_points, strict=True)
            for p, g in zip(pp, gp, strict=True)
        )
    mcq = _MCQ_GT.match(gt)
    if mcq and len(gt) <= 2 or (mcq and re.match(r"^\(?[A-H][.)]", gt)):
        return _mcq_letter(pred) == mcq.group(1)
    if pred == gt:
        return True
    pred_num, gt_num = _as_number(pred), _as_number(gt)
    if pred_num is not None and gt_num is not None:
        if gt_num == 0:
            return pred_num == 0
        return abs(pred_num - gt_num) / abs(gt_num) < 1e-6
    if _normalise_words(pred) == _normalise_words(gt):
        return True
    (pred_bare, pred_unit), (gt_bare, gt_unit) = _strip_unit(pred), _strip_unit(gt)
    same_bare = bool(pred_bare) and _normalise_words(pred_bare) == _normalise_words(gt_bare)
    return same_bare and pred_unit == gt_unit


@functools.lru_cache(maxsize=1 << 16)  # a group's rollouts repeat answers, and parsing is the slow part
def _math_verify(prediction: str, truth: str) -> bool:
    from math_verify import parse, verify

    try:
        gold = parse(f"${_strip_latex(truth)}$", parsing_timeout=None)
        pred = parse(f"${_strip_latex(prediction)}$", parsing_timeout=None)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=None))
    except Exception:  # math-verify raises on unparsable input: a non-match
        return False


def judge(prediction: str, truth: str) -> bool:
    """Rule-based answer check; several values must match in order; math-verify as fallback."""
    pred_parts, gt_parts = _split_values(prediction), _split_values(truth)
    if len(pred_parts) > 1 or len(gt_parts) > 1:
        return len(pred_parts) == len(gt_parts) and all(map(_single_match, pred_parts, gt_parts))
    if _single_match(prediction, truth):
        return True
    # Two integers the rules found unequal are unequal to math-verify too, which takes ~30 ms a pair.
    if _INTEGER.fullmatch(prediction.strip()) and _INTEGER.fullmatch(truth.strip()):
        return False
    return _math_verify(prediction, truth)


def compute_score(
    response: str,
    ground_truth: str,
    accuracy_weight: float = 0.8,
    format_weight: float = 0.2,
    equivalent_answers: tuple[str, ...] = (),
):
    """Score one decoded response: {'score', 'acc', 'format'}; a malformed response scores 0. An answer
    matching the ground truth or one of its `equivalent_answers` (the reference's math-verify data
    sources list them) is correct."""
    segments = parse_response(response)
    if not segments.valid:
        return {"score": 0.0, "acc": 0.0, "format": 0.0}
    answer = segments.answer
    truths = [str(ground_truth), *(str(a) for a in equivalent_answers)]
    correct = any(judge(answer, truth) for truth in truths)
    acc = 0.0 if not answer or len(answer) >= MAX_ANSWER_CHARS else float(correct)
    return {"score": accuracy_weight * acc + format_weight, "acc": acc, "format": 1.0}
