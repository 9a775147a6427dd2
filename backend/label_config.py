"""Parse a Label Studio label config into what the miner needs.

Two shapes are supported, each one Image object and one control pointing at it:
- classification: one single-choice <Choices> (kind "choices");
- object detection: one <RectangleLabels> (kind "rectangles").
Anything else is refused with an error that says what is missing, because a
silently half-understood config trains the wrong model. `LabelConfig.kind` chooses the project's
task kind once (backend/task_kinds.py); no other module asks which kind it is.
"""
from __future__ import annotations

import dataclasses
import functools
import html
import re
from typing import Iterable, Sequence

import numpy as np
from label_studio_sdk.label_interface import LabelInterface
from mcm_core.tails import TailSet, choose_tail_classes

from .validation import Skipped, short

# Controls that only read the task and never produce training labels.
_PASSIVE_TAGS = {"Header", "Text", "View", "Style", "Filter", "HyperText", "Table"}
CONTROL_TAGS = {"Choices": "choices", "RectangleLabels": "rectangles"}
MAX_CLASS_CHARS = 500  # a longer <Choice>/<Label> value is not a class name anyone picks


class LabelConfigError(ValueError):
    """The label config is not one Image + one single-choice Choices or one RectangleLabels."""


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    image_name: str        # the Image tag name (to_name of predictions)
    image_key: str         # the task data key holding the image URL ($image -> image)
    control_name: str      # the Choices / RectangleLabels tag name (from_name of predictions)
    classes: tuple[str, ...]
    kind: str = "choices"  # "choices" (a class per image) or "rectangles" (boxes with a class each)
    # Tail classes the admin declared: <Choice value="x" mcm_tail="true"/> (or <Label ...>); the count rule
    # adds undeclared ones unless the control says mcm_count_tail="false" (mcm_core.tails, docs/backend.md).
    declared_tail: tuple[str, ...] = ()
    count_tail: bool = True

    def tail_set(self, labels, previous: Iterable[str] = ()) -> TailSet:
        """The tail classes for class indices `labels`: the declared ones plus, unless the config turns it
        off, the count rule's (mcm_core.tails), which keeps the `previous` version's counted classes (names;
        unknown ones ignored) until they have as many labels as an average class. A declaration that leaves
        no labeled class as head is set aside (the miner needs head rows to learn what is common): the count
        rule decides alone then."""
        declared = [self.classes.index(c) for c in self.declared_tail]
        if declared and set(np.asarray(labels, dtype=np.int64).tolist()) <= set(declared):
            declared = []
        kept = [self.classes.index(c) for c in previous if c in self.classes]
        return choose_tail_classes(labels, len(self.classes), declared, use_counts=self.count_tail or not declared,
                                   previous=kept)

    def class_index(self, label: str) -> int:
        try:
            return self.classes.index(label)
        except ValueError:
            raise ValueError(f"unknown label {label!r}; the config's classes are {list(self.classes)}") from None


@functools.lru_cache(maxsize=64)
def _tag_problems(interface: LabelInterface) -> tuple[list[str], list, list]:
    """(what is unsupported about the config's tags, its Image tags, its supported controls)."""
    images = [o for o in interface.objects if o.tag == "Image"]
    other_objects = [o.tag for o in interface.objects if o.tag not in ("Image",) and o.tag not in _PASSIVE_TAGS]
    controls = [c for c in interface.controls if c.tag in CONTROL_TAGS]
    other_controls = [f"{c.tag} name={c.name!r}" for c in interface.controls if c.tag not in CONTROL_TAGS]
    problems = []
    if not images:
        problems.append("no <Image> tag (one is required)")
    elif len(images) > 1:
        problems.append(f"{len(images)} <Image> tags (exactly one is supported)")
    if other_objects:
        problems.append(f"unsupported object tags {other_objects} (only <Image> is supported)")
    tags = sorted({c.tag for c in controls})
    if not controls:
        problems.append("no <Choices> or <RectangleLabels> tag (one is required)")
    elif len(tags) > 1:
        problems.append("both <Choices> and <RectangleLabels> (one control is supported: <Choices> for "
                        "classification or <RectangleLabels> for object detection)")
    elif len(controls) > 1:
        problems.append(f"{len(controls)} <{tags[0]}> tags (exactly one is supported)")
    if other_controls:
        problems.append(f"unsupported control tags {other_controls} (free text, other region types and other "
                        "controls are not supported; use one single-choice <Choices> or one <RectangleLabels>)")
    return problems, images, controls


def _usable_classes(values, tag: str, skipped: Skipped | None) -> tuple[str, ...]:
    """The control's class names, without empty, overlong (MAX_CLASS_CHARS) and repeated ones:
    each of those is skipped (counted in `skipped`) rather than trained on or shown."""
    classes: list[str] = []
    for value in values:
        problem = None
        if not isinstance(value, str) or not value.strip():
            problem = f"<{tag}> value {short(value)} is not a class name"
        elif len(value) > MAX_CLASS_CHARS:
            problem = f"<{tag}> value {short(value)} is longer than {MAX_CLASS_CHARS} characters"
        elif value in classes:
            problem = f"<{tag}> value {short(value)} appears twice; its first place is kept"
        if problem:
            if skipped is not None:
                skipped.add("label_values", None, problem)
            continue
        classes.append(value)
    return tuple(classes)


def parse_label_config(config: str, skipped: Skipped | None = None) -> LabelConfig:
    """Return the Image/control pair of `config` or raise LabelConfigError naming what is wrong.
    Unusable class values are left out (and counted in `skipped`), see `_usable_classes`."""
    wanted = "one <Image> and one <Choices> or one <RectangleLabels> tag"
    if not config or not isinstance(config, str) or not config.strip():
        raise LabelConfigError(f"label config is empty: expected {wanted}")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the sdk raises various XML errors
        raise LabelConfigError(f"label config is not valid XML: {exc}") from None
    problems, images, controls = _tag_problems(interface)
    if problems:
        raise LabelConfigError("unsupported label config: " + "; ".join(problems))
    image, control = images[0], controls[0]
    kind = CONTROL_TAGS[control.tag]
    if kind == "choices" and control.attr.get("choice", "single") not in ("single", "single-radio"):
        raise LabelConfigError(f"<Choices name={control.name!r}> has choice={control.attr.get('choice')!r}; "
                               "only single choice is supported")
    if image.name not in (control.to_name or []):
        raise LabelConfigError(f"<{control.tag} name={control.name!r}> has toName={control.to_name}, "
                               f"it must point at <Image name={image.name!r}>")
    value = image.value or ""
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"<Image name={image.name!r}> value={value!r} must reference task data like $image")
    child = "Choice" if kind == "choices" else "Label"
    classes = _usable_classes(control.labels or (), child, skipped)
    if len(classes) < 2:
        raise LabelConfigError(f"<{control.tag} name={control.name!r}> has {len(classes)} <{child}> values; "
                               "at least 2 needed (non-empty, distinct, at most "
                               f"{MAX_CLASS_CHARS} characters each)")
    declared = tuple(c for c in classes if _is_true(_label_attrs(control, c).get(TAIL_ATTR)))
    count_tail = not _is_false(control.attr.get(COUNT_TAIL_ATTR))
    return LabelConfig(image_name=image.name, image_key=value[1:], control_name=control.name, classes=classes,
                       kind=kind, declared_tail=declared, count_tail=count_tail or not declared)


TAIL_ATTR = "mcm_tail"                # on <Choice>/<Label>: "true" declares the class a tail class
COUNT_TAIL_ATTR = "mcm_count_tail"    # on <Choices>/<RectangleLabels>: "false" = only the declared ones


def _label_attrs(control, value: str) -> dict:
    attrs = getattr((getattr(control, "labels_attrs", None) or {}).get(value), "attr", None)
    return attrs if isinstance(attrs, dict) else {}


def _is_true(value) -> bool:
    return isinstance(value, str) and value.strip().lower() in ("true", "1", "yes")


def _is_false(value) -> bool:
    return isinstance(value, str) and value.strip().lower() in ("false", "0", "no")


_CLASS_TAG = re.compile(r"<(Choice|Label)\b([^<>]*?)(/?)>")
_CONTROL_TAG = re.compile(r"<(Choices|RectangleLabels)\b([^<>]*?)(/?)>")


def _attr_pattern(name: str) -> re.Pattern:
    return re.compile(rf"""\s+{name}\s*=\s*("[^"]*"|'[^']*')""")


def _attr_value(attrs: str, name: str) -> str | None:
    found = _attr_pattern(name).search(attrs)
    return html.unescape(found.group(1)[1:-1]) if found else None


def declare_tail(config: str, names: Sequence[str], count_rule: bool = True) -> str:
    """`config` with exactly `names` declared tail (mcm_tail="true" on their <Choice>/<Label>) and the count
    rule on or off (mcm_count_tail="false" on the control). A textual edit of those start tags only, so
    the admin's formatting and comments survive. Unknown names: LabelConfigError listing the valid ones."""
    parsed = parse_label_config(config)
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in parsed.classes]
    if unknown:
        raise LabelConfigError(f"unknown class(es) {unknown}; the label config's classes are {list(parsed.classes)}")
    if len(wanted) >= len(parsed.classes):
        raise LabelConfigError("every class would be tail: a tail needs at least one head class to be rare against")
    if not count_rule and not wanted:
        raise LabelConfigError("turning the count rule off needs at least one declared tail class")
    tail_attr, count_attr = _attr_pattern(TAIL_ATTR), _attr_pattern(COUNT_TAIL_ATTR)

    def mark_class(m: re.Match) -> str:
        attrs = tail_attr.sub("", m.group(2))
        if _attr_value(attrs, "value") in wanted:
            attrs = attrs.rstrip() + f' {TAIL_ATTR}="true"' + (" " if m.group(3) else "")
        return f"<{m.group(1)}{attrs}{m.group(3)}>"

    def mark_control(m: re.Match) -> str:
        attrs = m.group(2)
        if _attr_value(attrs, "name") == parsed.control_name:
            attrs = count_attr.sub("", attrs)
            if not count_rule:
                attrs = attrs.rstrip() + f' {COUNT_TAIL_ATTR}="false"' + (" " if m.group(3) else "")
        return f"<{m.group(1)}{attrs}{m.group(3)}>"

    edited = _CONTROL_TAG.sub(mark_control, _CLASS_TAG.sub(mark_class, config))
    check = parse_label_config(edited)
    if set(check.declared_tail) != set(wanted) or check.count_tail != (count_rule or not wanted):
        raise LabelConfigError("could not edit the label config's tail declaration safely; add "
                               f'{TAIL_ATTR}="true" to the classes by hand in Settings > Labeling Interface > Code')
    return edited


def config_from_meta(meta: dict) -> LabelConfig:
    """The config a stored model version was trained with (its meta.json)."""
    return LabelConfig(image_name=meta["image_name"], image_key=meta["image_key"],
                       control_name=meta["control_name"], classes=tuple(meta["classes"]),
                       kind=meta.get("kind", "choices"), declared_tail=tuple(meta.get("tail_declared") or ()))
