"""backend.labelstudio.client against the fake Label Studio over real HTTP (the e2e tests cover the real server)."""
from __future__ import annotations

import pytest

from backend.labelstudio import client as labelstudio
from backend_fakes import LABEL_CONFIG


@pytest.fixture
def project(fake_ls):
    fake_ls.add_project(3, LABEL_CONFIG)
    for tid in range(1, 26):
        fake_ls.add_task(3, tid, f"https://img.example/{tid}.png", label="zero" if tid % 5 == 0 else None)
    fake_ls.add_task(4, 100, "https://img.example/other.png", label="one")  # another project
    return labelstudio.make_client(fake_ls.url, fake_ls.legacy_token)


@pytest.mark.parametrize("export_enabled", [True, False])
def test_list_annotated_and_unlabeled_with_paging(fake_ls, project, monkeypatch, export_enabled):
    fake_ls.export_enabled = export_enabled
    monkeypatch.setattr(labelstudio, "PAGE_SIZE", 4)  # several pages, and an exact multiple (404 past the end)
    annotated = labelstudio.list_annotated_tasks(project, 3)
    assert [t["id"] for t in annotated] == [5, 10, 15, 20, 25]
    assert annotated[0]["annotations"][0]["result"][0]["value"] == {"choices": ["zero"]}
    unlabeled = labelstudio.list_unlabeled_tasks(project, 3)
    assert [t["id"] for t in unlabeled] == [t for t in range(1, 26) if t % 5]
    assert unlabeled[0] == {"id": 1, "data": {"image": "https://img.example/1.png"}}


def _prediction(task, score=0.5, version="v1", from_name="choice"):
    return {"task": task, "score": score, "model_version": version,
            "result": [{"from_name": from_name, "to_name": "image", "type": "choices", "value": {"choices": ["one"]}}]}


def test_push_in_chunks_set_version_and_delete_one_by_one(fake_ls, project):
    created = labelstudio.push_predictions(project, 3, [_prediction(t) for t in range(1, 8)], chunk_size=3)
    assert created == 7 and len(fake_ls.predictions) == 7
    assert [c for c in fake_ls.calls if c[1] == "/api/projects/3/import/predictions"] == \
        [("POST", "/api/projects/3/import/predictions")] * 3
    labelstudio.set_model_version(project, 3, "v1")
    assert fake_ls.projects[3]["model_version"] == "v1"
    labelstudio.push_predictions(project, 3, [_prediction(t, version="v12") for t in range(1, 3)])
    assert labelstudio.model_version_counts(project, 3) == {"v1": 7, "v12": 2}
    ids = labelstudio.version_prediction_ids(project, 3, "v1")
    assert sorted(ids) == sorted(p["id"] for p in fake_ls.predictions if p["model_version"] == "v1")
    assert all(labelstudio.delete_prediction(project, i) for i in ids)
    assert not labelstudio.delete_prediction(project, ids[0])  # already gone: not an error
    assert labelstudio.model_version_counts(project, 3) == {"v12": 2}


def test_push_requests_never_exceed_one_label_studio_import_batch(fake_ls, project):
    fake_ls.add_project(9, LABEL_CONFIG)
    for tid in range(1000, 2200):
        fake_ls.add_task(9, tid, "https://img.example/x.png")
    assert labelstudio.push_predictions(project, 9, [_prediction(t) for t in range(1000, 2200)], chunk_size=5000) == 1200
    assert len([c for c in fake_ls.calls if c[1] == "/api/projects/9/import/predictions"]) == 3


@pytest.mark.parametrize("bad", [_prediction(2, score=1.5), _prediction(2, from_name="wrong")])
def test_push_raises_when_label_studio_drops_items(project, bad):
    with pytest.raises(labelstudio.LabelStudioError, match="created 1 of 2"):
        labelstudio.push_predictions(project, 3, [_prediction(1), bad], chunk_size=10)


def test_missing_settings_and_bad_token_are_clear(fake_ls):
    with pytest.raises(labelstudio.LabelStudioError, match="LABEL_STUDIO_URL"):
        labelstudio.make_client(None, "x")
    client = labelstudio.make_client(fake_ls.url, "wrong-token")
    with pytest.raises(labelstudio.LabelStudioError, match="HTTP 401"):
        labelstudio.list_unlabeled_tasks(client, 3)
