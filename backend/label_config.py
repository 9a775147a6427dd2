"""Parse a Label Studio label config into what the miner needs.

Two shapes are supported, each one Image object and one control pointing at it:
- classification: one single-choice <Choices> (kind "choices");
- object detection: one <RectangleLabels> (kind "rectangles").
Anything else is refused with an error that says what is missing, because a
silently half-understood config trains the wrong model. The rest of the backend
branches on `LabelConfig.kind` only where boxes differ from whole images
(labels.py, fitting.py, scoring.py; the box work is in backend/detection.py).
"""
from __future__ import annotations

import dataclasses
import functools

from label_studio_sdk.label_interface import LabelInterface

# Controls that only read the task and never produce training labels.
_PASSIVE_TAGS = {"Header", "Text", "View", "Style", "Filter", "HyperText", "Table"}
CONTROL_TAGS = {"Choices": "choices", "RectangleLabels": "rectangles"}


class LabelConfigError(ValueError):
    """The label config is not one Image + one single-choice Choices or one RectangleLabels."""


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    image_name: str        # the Image tag name (to_name of predictions)
    image_key: str         # the task data key holding the image URL ($image -> image)
    control_name: str      # the Choices / RectangleLabels tag name (from_name of predictions)
    classes: tuple[str, ...]
    kind: str = "choices"  # "choices" (a class per image) or "rectangles" (boxes with a class each)

    @property
    def detection(self) -> bool:
        return self.kind == "rectangles"

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


def parse_label_config(config: str) -> LabelConfig:
    """Return the Image/control pair of `config` or raise LabelConfigError naming what is wrong."""
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
    classes = tuple(control.labels or ())
    child = "Choice" if kind == "choices" else "Label"
    if len(classes) < 2:
        raise LabelConfigError(f"<{control.tag} name={control.name!r}> has {len(classes)} <{child}> values; "
                               "at least 2 needed")
    if len(set(classes)) != len(classes):
        raise LabelConfigError(f"<{control.tag} name={control.name!r}> has duplicate <{child}> values")
    return LabelConfig(image_name=image.name, image_key=value[1:], control_name=control.name, classes=classes,
                       kind=kind)


def config_from_meta(meta: dict) -> LabelConfig:
    """The config a stored model version was trained with (its meta.json)."""
    return LabelConfig(image_name=meta["image_name"], image_key=meta["image_key"],
                       control_name=meta["control_name"], classes=tuple(meta["classes"]),
                       kind=meta.get("kind", "choices"))
