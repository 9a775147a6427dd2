"""Declared tail classes (mcm_tail="true" in the label config) through the backend's training path."""
from __future__ import annotations


from backend.context import Context
from backend.fitting import train_project
from backend.label_config import parse_label_config
from backend_fakes import LABEL_CONFIG, populate_project

PID = 3
DECLARED = LABEL_CONFIG.replace('<Choice value="seven"/>', '<Choice value="seven" mcm_tail="true"/>')


def test_the_label_config_declares_tail_classes_and_can_turn_the_count_rule_off():
    config = parse_label_config(DECLARED)
    assert config.declared_tail == ("seven",) and config.count_tail
    only = parse_label_config(DECLARED.replace('choice="single"', 'choice="single" mcm_count_tail="false"'))
    assert only.declared_tail == ("seven",) and not only.count_tail
    plain = parse_label_config(LABEL_CONFIG.replace('choice="single"', 'choice="single" mcm_count_tail="false"'))
    assert plain.declared_tail == () and plain.count_tail  # nothing declared: the count rule stays on
    assert parse_label_config(LABEL_CONFIG.replace('<Choice value="one"/>',
                                                   '<Choice value="one" mcm_tail="no"/>')).declared_tail == ()


def _train(fake_ls, images, make_settings, config: str) -> tuple[dict, object]:
    populate_project(fake_ls, images, pid=PID, head=10, tail=10, unlabeled_per_class=6)  # balanced labels
    fake_ls.projects[PID]["label_config"] = config
    settings = make_settings(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.legacy_token, cnn_epochs=4)
    context = Context(settings)
    version = train_project(PID, context, rescore=False)
    model = context.projects.get(PID).model
    assert model.version == version
    return model.meta, model.miner


def test_a_declared_class_is_tail_whatever_its_counts(fake_ls, images, make_settings):
    meta, miner = _train(fake_ls, images, make_settings, DECLARED)
    assert meta["tail_classes"] == ["seven"] and meta["tail_declared"] == ["seven"] and meta["tail_counted"] == []
    assert "declared by the admin: seven" in meta["tail_rule"]
    assert miner.tail_ == [2]  # the miner mines the same set the meta records


def test_without_a_declaration_balanced_labels_have_no_tail_and_a_never_labeled_class_is_one(
        fake_ls, images, make_settings):
    config = LABEL_CONFIG.replace('<Choice value="seven"/>', '<Choice value="seven"/><Choice value="nine"/>')
    meta, miner = _train(fake_ls, images, make_settings, config)
    assert meta["tail_classes"] == ["nine"] and meta["tail_counted"] == ["nine"] and meta["tail_declared"] == []
    assert miner.tail_ == [3] and meta["labeled_per_class"]["nine"] == 0


def test_declare_tail_edits_only_the_tags_and_refuses_unknown_classes():
    import pytest

    from backend.label_config import LabelConfigError, declare_tail

    config = LABEL_CONFIG.replace("<View>", "<View>\n  <!-- our digits -->")
    edited = declare_tail(config, ["one", "seven"], count_rule=False)
    parsed = parse_label_config(edited)
    assert parsed.declared_tail == ("one", "seven") and not parsed.count_tail
    assert "<!-- our digits -->" in edited and edited.count("\n") == config.count("\n")
    again = declare_tail(edited, ["zero"])  # re-declaring replaces, and turns the count rule back on
    assert parse_label_config(again).declared_tail == ("zero",) and parse_label_config(again).count_tail
    assert parse_label_config(declare_tail(again, [])).declared_tail == ()
    with pytest.raises(LabelConfigError, match=r"unknown class\(es\) \['eight'\]; .*'zero', 'one', 'seven'"):
        declare_tail(config, ["eight"])
    with pytest.raises(LabelConfigError, match="every class"):
        declare_tail(config, ["zero", "one", "seven"])
    with pytest.raises(LabelConfigError, match="count rule off"):
        declare_tail(config, [], count_rule=False)


def _label(fake_ls, truth: dict, name: str, n: int) -> None:
    """Annotate `n` more unlabeled tasks of class `name`, as an annotator of the tail-first tab would."""
    todo = [t for t, c in sorted(truth.items()) if c == name and not fake_ls.tasks[t]["annotations"]][:n]
    assert len(todo) == n
    for t in todo:
        fake_ls.tasks[t]["annotations"].append({
            "id": t * 10, "was_cancelled": False, "created_at": "2026-01-02T00:00:00Z",
            "updated_at": "2026-01-02T00:00:00Z",
            "result": [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [name]}}]})


def test_a_mined_class_stays_tail_until_it_has_as_many_labels_as_an_average_class(fake_ls, images, make_settings):
    truth = populate_project(fake_ls, images, pid=PID, head=10, tail=2, unlabeled_per_class=10)
    settings = make_settings(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.legacy_token, cnn_epochs=2)
    context = Context(settings)

    def tail_after_training():
        train_project(PID, context, rescore=False)
        meta = context.projects.get(PID).model.meta
        assert meta["tail_classes"] == meta["tail_counted"]
        return meta

    assert tail_after_training()["tail_classes"] == ["seven"]   # 2 labels against 10 and 10
    _label(fake_ls, truth, "seven", 3)                          # 5 of 25: ratio 0.6, not rare by the rule alone
    meta = tail_after_training()
    assert meta["tail_classes"] == ["seven"] and meta["labeled_per_class"]["seven"] == 5
    assert "kept from the previous version): seven" in meta["tail_rule"]
    _label(fake_ls, truth, "seven", 5)                          # 10 of 30: as many as an average class
    assert tail_after_training()["tail_classes"] == []
    # without a previous version the count rule alone decides: 5 of 25 is no tail
    config = parse_label_config(LABEL_CONFIG)
    assert config.tail_set([0] * 10 + [1] * 10 + [2] * 5).classes == ()
    assert config.tail_set([0] * 10 + [1] * 10 + [2] * 5, previous=["seven", "not a class", 3]).classes == (2,)
