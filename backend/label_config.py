"""Parse a Label Studio label config into what the miner needs.

Only one shape is supported: one Image object and one single-choice Choices
control pointing at it. Anything else is refused with an error that says what
is missing, because a silently half-understood config trains the wrong model.
"""
from __future__ import annotations

import dataclasses
import functools

from label_studio_sdk.label_interface import LabelInterface

# Controls that only read the task and never produce training labels.
_PASSIVE_TAGS = {"Header", "Text", "View", "Style", "Filter", "HyperText", "Table"}


class LabelConfigError(ValueError):
    """The label config is not one Image + one single-choice Choices."""


@dataclasses.dataclass(frozen=True)
class ImageChoicesConfig:
    image_name: str        # the Image tag name (to_name of predictions)
    image_key: str         # the task data key holding the image URL ($image -> image)
    control_name: str      # the Choices tag name (from_name of predictions)
    classes: tuple[str, ...]

    def class_index(self, label: str) -> int:
        try:
            return self.classes.index(label)
        except ValueError:
            raise ValueError(f"unknown label {label!r}; the config's classes are {list(self.classes)}") from None


@functools.lru_cache(maxsize=64)
def parse_label_config(config: str) -> ImageChoicesConfig:
    """Return the Image/Choices pair of `config` or raise LabelConfigError naming what is wrong."""
    if not config or not isinstance(config, str) or not config.strip():
        raise LabelConfigError("label config is empty: expected one <Image> and one <Choices> tag")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the sdk raises various XML errors
        raise LabelConfigError(f"label config is not valid XML: {exc}") from None
    images = [o for o in interface.objects if o.tag == "Image"]
    other_objects = [o.tag for o in interface.objects if o.tag not in ("Image",) and o.tag not in _PASSIVE_TAGS]
    choices = [c for c in interface.controls if c.tag == "Choices"]
    other_controls = [f"{c.tag} name={c.name!r}" for c in interface.controls if c.tag != "Choices"]
    problems = []
    if not images:
        problems.append("no <Image> tag (one is required)")
    elif len(images) > 1:
        problems.append(f"{len(images)} <Image> tags (exactly one is supported)")
    if other_objects:
        problems.append(f"unsupported object tags {other_objects} (only <Image> is supported)")
    if not choices:
        problems.append("no <Choices> tag (one is required)")
    elif len(choices) > 1:
        problems.append(f"{len(choices)} <Choices> tags (exactly one is supported)")
    if other_controls:
        problems.append(f"unsupported control tags {other_controls} (free text, regions and other "
                        "controls are not supported; use one single-choice <Choices>)")
    if problems:
        raise LabelConfigError("unsupported label config: " + "; ".join(problems))
    image, control = images[0], choices[0]
    if control.attr.get("choice", "single") not in ("single", "single-radio"):
        raise LabelConfigError(f"<Choices name={control.name!r}> has choice={control.attr.get('choice')!r}; "
                               "only single choice is supported")
    if image.name not in (control.to_name or []):
        raise LabelConfigError(f"<Choices name={control.name!r}> has toName={control.to_name}, "
                               f"it must point at <Image name={image.name!r}>")
    value = image.value or ""
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"<Image name={image.name!r}> value={value!r} must reference task data like $image")
    classes = tuple(control.labels or ())
    if len(classes) < 2:
        raise LabelConfigError(f"<Choices name={control.name!r}> has {len(classes)} <Choice> values; at least 2 needed")
    if len(set(classes)) != len(classes):
        raise LabelConfigError(f"<Choices name={control.name!r}> has duplicate <Choice> values")
    return ImageChoicesConfig(image_name=image.name, image_key=value[1:], control_name=control.name,
                              classes=classes)


def config_from_meta(meta: dict) -> ImageChoicesConfig:
    """The config a stored model version was trained with (its meta.json)."""
    return ImageChoicesConfig(image_name=meta["image_name"], image_key=meta["image_key"],
                              control_name=meta["control_name"], classes=tuple(meta["classes"]))
