"""Label Studio 1.23.2's web UI as an annotator uses it, driven by Playwright (sync API).

Every step waits for what a person would see (an element, a changed task id, a network answer),
never for a fixed time. Selectors were read from the running 1.23.2 UI:
  login / signup forms        input[name=email], input[name=password], submit button
  Data Manager rows           the row checkbox, aria-label "Select Task <id>"
  "Label Tasks As Displayed"  the menu behind the "Toggle open" arrow next to "Label All Tasks"
  labeling footer             .lsf-current-task__task-id (its first text node is the task id)
  class choices               .lsf-choice input[name=<class>] (Choices with choice="single")
  Submit                      [data-testid=bottombar-submit-button]; POST /api/tasks/<id>/annotations
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

from playwright.sync_api import Browser, Page, Playwright, Response, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NOT_SAVED_TOAST = "Annotation is not saved"
ANNOTATION_POST = re.compile(r"/api/tasks/(\d+)/annotations/?(\?|$)")
TASK_ID_JS = """prev => {
  const e = document.querySelector('.lsf-current-task__task-id');
  const id = e && e.firstChild ? e.firstChild.textContent.trim() : '';
  return /^\\d+$/.test(id) && id !== prev ? id : false;
}"""


def short_body(text: str) -> str:
    """Label Studio's answer, short: JSON as it is, its HTML error pages reduced to their title."""
    if text.lstrip().lower().startswith(("<!doctype", "<html")):
        title = re.search(r"<title>(.*?)</title>", text, re.S | re.I)
        return f"(HTML error page{': ' + title.group(1).strip() if title else ''})"
    return text[:400]


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's chromium: Playwright's own browser download is not reachable here."""
    executable = shutil.which("chromium")
    if not executable:
        raise RuntimeError("Debian's chromium is not installed (apt-get install chromium; scripts/test.sh does it)")
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


@dataclasses.dataclass
class Submission:
    """One click on Submit and what Label Studio answered."""

    annotator: str
    user_id: int                    # the annotator's Label Studio user
    task: int
    label: str
    prefilled: list[str]            # classes checked when the task opened (the prediction's pre-fill)
    status: int                     # HTTP status of POST /api/tasks/<id>/annotations
    body: str                       # Label Studio's answer (JSON text, or "(HTML error page ...)")
    parent_prediction: int | None   # what the UI sent: the prediction the task was pre-filled from
    toast: bool                     # the red "Annotation is not saved" toast appeared
    t_sent: float                   # time.monotonic() at the click
    t_answered: float               # time.monotonic() when the answer arrived
    next_loaded: bool               # after a save, the next task appeared (else the view hung)
    api_errors: list[str]           # Label Studio API errors the page received meanwhile

    @property
    def saved(self) -> bool:
        return self.status < 300 and not self.toast

    @property
    def annotation_id(self) -> int | None:
        try:
            return int(json.loads(self.body)["id"]) if self.status < 300 else None
        except (ValueError, KeyError, TypeError):
            return None


class AnnotatorUI:
    """One annotator's tab on Label Studio."""

    def __init__(self, page: Page, base_url: str, name: str, shots: Path,
                 ready: str = ".lsf-choice input.ant-checkbox-input") -> None:
        self.page = page
        self.ready = ready                  # what a task's labeling view shows once it is usable
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.shots = shots
        self.user_id: int | None = None     # Label Studio's id of the logged-in person
        self.task: int | None = None        # the task open in the labeling view
        self.opened_at = 0.0                # when it appeared (time.monotonic())
        self.served: list[int] = []         # every task the labeling view showed, in order
        self.served_at: list[float] = []    # ... and when (time.monotonic())
        self.api_errors: list[str] = []     # every API answer >= 400 this page received
        page.on("response", self._note_error)

    def _note_error(self, response: Response) -> None:
        if response.status < 400 or "/api/" not in response.url:
            return
        try:
            body = short_body(response.text())
        except Exception as exc:  # noqa: BLE001 (the status alone is still worth keeping)
            body = f"(body unreadable: {exc})"
        path = response.url.split("://", 1)[-1].split("/", 1)[-1]
        self.api_errors.append(f"{response.request.method} /{path} -> {response.status} {body!r}")

    # ------------------------------------------------------------------ accounts
    def login(self, email: str, password: str) -> None:
        self.page.goto(self.base_url + "/user/login/")
        self.page.locator("input[name=email]").fill(email)
        self.page.locator("input[name=password]").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        self.page.wait_for_url(lambda url: "/user/login" not in url)
        self._whoami()

    def sign_up(self, invite_path: str, email: str, password: str) -> None:
        """The open-source way to add a person to the organization: the invite link's sign-up form."""
        self.page.goto(self.base_url + invite_path)
        self.page.locator("input[name=email]").fill(email)
        self.page.locator("input[name=password]").fill(password)
        self.page.get_by_role("button", name="Create Account").click()
        self.page.wait_for_url(lambda url: "/user/signup" not in url)
        self._whoami()

    def _whoami(self) -> None:
        response = self.page.request.get(self.base_url + "/api/current-user/whoami")  # the session cookie
        assert response.ok, f"{self.name}: whoami after logging in: HTTP {response.status}"
        self.user_id = int(response.json()["id"])

    # ------------------------------------------------------------------ Data Manager
    def open_tab(self, project_id: int, view_id: int) -> list[int]:
        """Open the project's Data Manager on tab `view_id` (a fresh page load); the visible rows' task ids."""
        self.page.goto(f"{self.base_url}/projects/{project_id}/data?tab={view_id}")
        return self.row_ids()

    def row_ids(self) -> list[int]:
        rows = self.page.locator('input[aria-label^="Select Task "]')
        rows.first.wait_for()
        return [int(label.rsplit(" ", 1)[1]) for label in
                rows.evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")]

    def label_tasks_as_displayed(self) -> int:
        """Dropdown arrow next to "Label All Tasks" -> "Label Tasks As Displayed"; the first task served."""
        label_all = self.page.get_by_role("button", name="Label All Tasks")
        label_all.locator("xpath=following-sibling::button[@aria-label='Toggle open']").click()
        self.page.get_by_text("Label Tasks As Displayed", exact=True).click()
        self.task = None
        return self.wait_next_task()

    # ------------------------------------------------------------------ labeling
    def wait_next_task(self, timeout_s: float = 90) -> int:
        """Wait until the labeling footer shows a task other than the current one and its controls
        (`self.ready`) are drawn; record it as served."""
        handle = self.page.wait_for_function(TASK_ID_JS, arg=str(self.task or ""), timeout=timeout_s * 1000)
        self.task = int(handle.json_value())
        self.page.locator(self.ready).first.wait_for()
        self.opened_at = time.monotonic()
        self.served.append(self.task)
        self.served_at.append(self.opened_at)
        return self.task

    def checked_classes(self) -> list[str]:
        return self.page.locator(".lsf-choice input.ant-checkbox-input:checked").evaluate_all(
            "els => els.map(e => e.name)")

    def choose(self, label: str) -> list[str]:
        """Make `label` the only chosen class; returns the classes that were pre-filled."""
        prefilled = self.checked_classes()
        box = self.page.locator(f'.lsf-choice input.ant-checkbox-input[name="{label}"]')
        if not box.is_checked():  # single choice: clicking the checked one would clear it
            # `has` is matched inside the label element, so it must not name the label's ancestors.
            inside = self.page.locator(f'input.ant-checkbox-input[name="{label}"]')
            self.page.locator(".lsf-choice__checkbox").filter(has=inside).click()
        expect(box).to_be_checked()
        chosen = self.checked_classes()
        assert chosen == [label], f"{self.name}: task {self.task}: wanted only {label!r} checked, UI shows {chosen}"
        return prefilled

    def submit(self, label: str, prefilled: list[str], timeout_s: float = 45) -> Submission:
        """Click Submit; wait for Label Studio's answer and for the next task or the error toast."""
        task = self.task
        n_errors = len(self.api_errors)
        t_sent = time.monotonic()
        with self.page.expect_response(
                lambda r: r.request.method == "POST" and bool(ANNOTATION_POST.search(r.url)),
                timeout=timeout_s * 1000) as answer:
            self.page.locator('[data-testid="bottombar-submit-button"]').click()
        response: Response = answer.value
        t_answered = time.monotonic()
        try:
            body = short_body(response.text())
        except Exception as exc:  # noqa: BLE001 (a body Playwright cannot read must not hide the status)
            body = f"(body unreadable: {exc})"
        try:
            parent = json.loads(response.request.post_data or "{}").get("parent_prediction")
        except ValueError:
            parent = None
        toast = self.page.get_by_text(NOT_SAVED_TOAST)
        next_loaded = False
        if response.status < 300:
            try:
                self.wait_next_task(timeout_s)
                next_loaded = True
            except PlaywrightTimeout:  # e.g. the next-task request failed: the view spins forever
                pass
            seen = toast.count() > 0 and toast.first.is_visible()
        else:
            try:  # a person would see the red toast; give it time to render
                toast.first.wait_for(state="visible", timeout=15_000)
                seen = True
            except Exception:  # noqa: BLE001 (no toast is a finding, not an error)
                seen = False
        return Submission(self.name, int(self.user_id or 0), int(task), label, prefilled, response.status, body,
                          int(parent) if parent else None, seen, t_sent, t_answered, next_loaded,
                          self.api_errors[n_errors:])

    # ------------------------------------------------------------------ evidence
    def save_evidence(self, name: str) -> Path:
        """Screenshot + HTML of the page, for the report or a failure."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        (self.shots / f"{name}.html").write_text(self.page.content())
        return path
