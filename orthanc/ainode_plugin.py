"""ainode's Orthanc plugin: tell the node about new series; show the node's job status.

Loaded by Orthanc's Python plugin (Debian ``orthanc-python``, which runs Debian's
``/usr/bin/python3.11``): standard library only. It stays thin because Orthanc
waits while a callback runs:

- On ``STABLE_SERIES`` the change callback only puts the series' Orthanc id on a
  bounded queue. A background thread reads the series' UIDs from Orthanc and
  POSTs them to the node (``/api/notify/orthanc``), retrying with backoff while
  the node is unreachable. The node then pulls the series over DICOMweb.
- ``GET /ainode/studies/{orthanc-study-id}`` answers the node's status for that
  study (one short HTTP call to the node, bounded by ``TimeoutSeconds``).
- ``POST /ainode/studies/{orthanc-study-id}/send`` queues a notification for the
  whole study (the Orthanc Explorer button "Send to AI node" calls it).

Configuration, in Orthanc's JSON (all optional except ``Url`` and ``Token``)::

    "AiNode": {
      "Url": "http://127.0.0.1:8080",   // the node's HTTP address
      "Token": "…",                      // one of the node's dicomweb.tokens
      "Source": "orthanc",               // the node's sources.<name> for this Orthanc
      "NotifyStableSeries": true,        // false: only the Explorer button notifies
      "Modalities": [],                  // notify only these (empty: all but Ignore…)
      "IgnoreModalities": ["SEG", "SR", "PR", "KO"],  // never the node's own results
      "Rule": null,                      // ask the node to run only this rule
      "MaxAttempts": 20, "RetrySeconds": 2, "MaxRetrySeconds": 60,
      "TimeoutSeconds": 5, "QueueSize": 10000
    }
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type-checked against pyorthanc's stubs of the SDK
    from pyorthanc import orthanc_sdk as orthanc
else:
    import orthanc

DEFAULTS: dict[str, Any] = {
    "Url": "http://127.0.0.1:8080",
    "Token": "",
    "Source": "orthanc",
    "NotifyStableSeries": True,
    "Modalities": [],
    "IgnoreModalities": ["SEG", "SR", "PR", "KO"],
    "Rule": None,
    "MaxAttempts": 20,
    "RetrySeconds": 2.0,
    "MaxRetrySeconds": 60.0,
    "TimeoutSeconds": 5.0,
    "QueueSize": 10000,
}


def load_settings() -> dict[str, Any]:
    configured = json.loads(orthanc.GetConfiguration()).get("AiNode", {})
    settings = {**DEFAULTS, **configured}
    settings["Url"] = str(settings["Url"]).rstrip("/")
    return settings


SETTINGS = load_settings()
#: ("series" | "study", Orthanc id, attempt number)
PENDING: queue.Queue[tuple[str, str, int]] = queue.Queue(maxsize=int(SETTINGS["QueueSize"]))


def node_request(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One HTTP call to the node; returns the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(f"{SETTINGS['Url']}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {SETTINGS['Token']}")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=float(SETTINGS["TimeoutSeconds"])) as answer:
        return json.loads(answer.read() or b"null")


def notification(level: str, resource_id: str) -> dict[str, Any] | None:
    """The node's notification body for a series or study, or None to skip it."""
    if level == "series":
        series = json.loads(orthanc.RestApiGet(f"/series/{resource_id}"))
        modality = series["MainDicomTags"].get("Modality", "")
        if modality in SETTINGS["IgnoreModalities"]:
            return None
        if SETTINGS["Modalities"] and modality not in SETTINGS["Modalities"]:
            return None
        study = json.loads(orthanc.RestApiGet(f"/studies/{series['ParentStudy']}"))
        return {
            "event": "stable-series",
            "source": SETTINGS["Source"],
            "study_uid": study["MainDicomTags"]["StudyInstanceUID"],
            "series_uid": series["MainDicomTags"]["SeriesInstanceUID"],
            "orthanc_study_id": series["ParentStudy"],
            "orthanc_series_id": resource_id,
            "rule": SETTINGS["Rule"],
        }
    study = json.loads(orthanc.RestApiGet(f"/studies/{resource_id}"))
    return {
        "event": "send-study",
        "source": SETTINGS["Source"],
        "study_uid": study["MainDicomTags"]["StudyInstanceUID"],
        "orthanc_study_id": resource_id,
        "rule": SETTINGS["Rule"],
    }


def retry_delay(attempt: int) -> float:
    base = float(SETTINGS["RetrySeconds"]) * 2 ** (attempt - 1)
    return min(base, float(SETTINGS["MaxRetrySeconds"]))


def deliver(level: str, resource_id: str, attempt: int) -> None:
    try:
        body = notification(level, resource_id)
    except Exception as exc:  # the resource was deleted meanwhile, or Orthanc is stopping
        orthanc.LogWarning(f"ainode: cannot read {level} {resource_id}: {exc}")
        return
    if body is None:
        return
    try:
        answer = node_request("POST", "/api/notify/orthanc", body)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if attempt >= int(SETTINGS["MaxAttempts"]):
            orthanc.LogError(
                f"ainode: giving up notifying the node about {level} {resource_id}"
                f" after {attempt} attempts: {exc}"
            )
            return
        delay = retry_delay(attempt)
        orthanc.LogWarning(
            f"ainode: node not notified about {level} {resource_id} ({exc});"
            f" retry {attempt + 1} in {delay:.0f} s"
        )
        timer = threading.Timer(delay, enqueue, (level, resource_id, attempt + 1))
        timer.daemon = True
        timer.start()
        return
    orthanc.LogInfo(f"ainode: node notified about {level} {resource_id}: pull {answer.get('id')}")


def worker() -> None:
    while True:
        level, resource_id, attempt = PENDING.get()
        try:
            deliver(level, resource_id, attempt)
        except Exception as exc:  # never let the thread die
            orthanc.LogError(f"ainode: notification failed: {exc}")
        finally:
            PENDING.task_done()


def enqueue(level: str, resource_id: str, attempt: int = 1) -> bool:
    try:
        PENDING.put_nowait((level, resource_id, attempt))
    except queue.Full:
        orthanc.LogError(f"ainode: notification queue full, {level} {resource_id} dropped")
        return False
    return True


def on_change(change_type: orthanc.ChangeType, level: orthanc.ResourceType, resource: str) -> None:
    if change_type == orthanc.ChangeType.STABLE_SERIES and SETTINGS["NotifyStableSeries"]:
        enqueue("series", resource)


def answer_json(output: orthanc.RestOutput, body: Any) -> None:
    output.AnswerBuffer(json.dumps(body), "application/json")


def on_study_status(output: orthanc.RestOutput, uri: str, **request: Any) -> None:
    if request["method"] != "GET":
        output.SendMethodNotAllowed("GET")
        return
    study_id = request["groups"][0]
    try:
        study = json.loads(orthanc.RestApiGet(f"/studies/{study_id}"))
    except Exception:
        output.SendHttpStatusCode(404)
        return
    study_uid = study["MainDicomTags"]["StudyInstanceUID"]
    try:
        status = node_request("GET", f"/api/studies/{study_uid}/status")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        answer_json(output, {"study_uid": study_uid, "status": "node-unreachable",
                             "error": str(exc)})  # fmt: skip
        return
    status["orthanc_study_id"] = study_id
    answer_json(output, status)


def on_study_send(output: orthanc.RestOutput, uri: str, **request: Any) -> None:
    if request["method"] != "POST":
        output.SendMethodNotAllowed("POST")
        return
    study_id = request["groups"][0]
    queued = enqueue("study", study_id)
    answer_json(output, {"queued": queued, "orthanc_study_id": study_id})


EXPLORER_JS = """
$('#study').live('pagebeforecreate', function() {
  var send = $('<a>').attr('id', 'ainode-send').attr('data-role', 'button').attr('href', '#')
    .attr('data-icon', 'forward').attr('data-theme', 'e').text('Send to AI node');
  var show = $('<a>').attr('id', 'ainode-status').attr('data-role', 'button').attr('href', '#')
    .attr('data-icon', 'info').attr('data-theme', 'e').text('AI node status');
  send.insertBefore($('#study-delete').parent().parent());
  show.insertBefore($('#study-delete').parent().parent());
  send.click(function() {
    var id = $.mobile.pageData.uuid;
    $.ajax({ url: '../ainode/studies/' + id + '/send', type: 'POST', dataType: 'json',
      success: function() { alert('Sent to the AI node: it will fetch the study.'); },
      error: function() { alert('The AI node could not be notified.'); } });
  });
  show.click(function() {
    window.open('../ainode/studies/' + $.mobile.pageData.uuid);
  });
});
"""


def register() -> None:
    threading.Thread(target=worker, name="ainode-notify", daemon=True).start()
    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.RegisterRestCallback("/ainode/studies/([^/]+)", on_study_status)
    orthanc.RegisterRestCallback("/ainode/studies/([^/]+)/send", on_study_send)
    orthanc.ExtendOrthancExplorer(EXPLORER_JS)
    orthanc.LogWarning(
        f"ainode plugin: notifying {SETTINGS['Url']} as source {SETTINGS['Source']!r}"
        + ("" if SETTINGS["Token"] else " (no Token configured: the node will refuse)")
    )


register()
