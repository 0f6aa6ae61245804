"""``medhub listen``: a DICOM node that a PACS or a modality sends studies to, and that answers with results.

The node is a C-STORE SCP (and answers C-ECHO). Each received instance is written to the
:class:`~medhub.serve.spool.Spool` before success is answered; when a series has been quiet for
``series_timeout`` seconds it is claimed and run through the ordinary pipeline with the model
kept warm in this process (:data:`medhub.hub.runtime.RUNNERS`), its outputs are written under
``output/<SeriesInstanceUID>/`` and forwarded (``dimse://`` C-STORE or ``dicomweb://`` STOW-RS).
A forward that fails is kept in the spool's outbox and retried; a series that fails is kept
under ``failed/`` and the node goes on with the next. What MONAI Deploy's Informatics Gateway
does, in one process and one folder.

Every event is one line through ``log`` (the CLI prints them on stderr). Calling AE titles
are checked when ``allow_ae`` is given (the association is rejected otherwise).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import: invisible to types

from medhub.errors import MedhubError
from medhub.hub.runtime import RUNNERS
from medhub.hub.workflow import Workflow, predict_parameters
from medhub.inputs.dimse import STORAGE_SOP_CLASSES, check_ae_title
from medhub.inputs.push import PUSHED_SUFFIXES
from medhub.inputs.remote import check_push_url, label, push
from medhub.pipeline.report import Status
from medhub.pipeline.run import Pipeline, RunOptions
from medhub.serve.spool import OutboxEntry, Spool

Log = Callable[[str], None]

_SUCCESS, _OUT_OF_RESOURCES, _CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
_MAX_RETRY_WAIT = 600.0


@dataclass
class ListenerOptions:
    """What ``medhub listen`` was asked to do."""

    model: Any  # a catalog entry (hub.catalog.get_model)
    workflow: Workflow
    port: int
    output: Path
    ae_title: str = "MEDHUB"
    host: str = "127.0.0.1"
    forward: str | None = None
    series_timeout: float = 10.0
    allow_ae: Sequence[str] = ()
    device: str = "cpu"
    spool: Path | None = None  # default: output/.medhub-spool
    retry_interval: float = 30.0  # first wait before a failed forward is tried again (doubles, up to 10 min)
    poll_interval: float = 0.2

    def __post_init__(self) -> None:
        self.ae_title = check_ae_title(self.ae_title, "--ae-title")
        self.allow_ae = [check_ae_title(a, "--allow-ae") for a in self.allow_ae]
        if self.series_timeout < 0:
            raise MedhubError(f"--series-timeout must be 0 or more seconds, not {self.series_timeout}")
        if not 0 < self.port < 65536:
            raise MedhubError(f"--port must be between 1 and 65535, not {self.port}")
        if self.forward is not None:
            check_push_url(self.forward)


@dataclass
class _Association:
    ae_title: str
    address: str
    instances: int = 0
    series: set[str] = field(default_factory=set)
    refused: int = 0


class DicomListener:
    """The node: SCP threads receive into the spool, one worker thread runs quiet series and forwards."""

    def __init__(self, options: ListenerOptions, log: Log) -> None:
        self.options = options
        self.log = log
        self.spool = Spool(options.spool or options.output / ".medhub-spool")
        self._stop = threading.Event()
        self._server: Any = None
        self._worker: threading.Thread | None = None
        self._associations: dict[int, _Association] = {}
        self._guard = threading.Lock()
        self.processed = 0  # series run (whatever their status), for callers and tests

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Take the spool, load the model, start receiving, and work off what a previous run left."""
        options = self.options
        options.output.mkdir(parents=True, exist_ok=True)
        self.spool.open()
        try:
            self._warm_up()
            self._server = self._make_ae().start_server((options.host, options.port), block=False,
                                                        evt_handlers=self._handlers())
        except OSError as exc:
            self.spool.close()
            raise MedhubError(f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}") from None
        except BaseException:
            self.spool.close()
            raise
        who = f"calling AE titles {', '.join(options.allow_ae)}" if options.allow_ae else "any calling AE title"
        forward = f"; forwarding to {label(options.forward)}" if options.forward else ""
        self.log(f"listening as AE {options.ae_title} on {options.host}:{options.port} for {who}; model "
                 f"{options.model.card.id}, series quiet for {options.series_timeout:g} s run; outputs in "
                 f"{options.output}{forward}")
        leftovers = len(self.spool.claimed()) + len(self.spool.quiet_series(0))
        if leftovers:
            self.log(f"spool {self.spool.root}: {leftovers} series received before the restart, processing them")
        self._worker = threading.Thread(target=self._work, name="medhub-listen-worker", daemon=True)
        self._worker.start()

    def request_stop(self) -> None:
        """Ask the node to stop (safe from a signal handler): :meth:`wait` returns, the worker takes no new series."""
        self._stop.set()

    def stop(self, wait: bool = True) -> None:
        """Stop receiving; let the series being processed finish (unless ``wait`` is False); release the spool."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if wait and self._worker is not None:
            self._worker.join()
        self.spool.close()

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler or another thread)."""
        while not self._stop.wait(0.5):
            pass

    # -- the DICOM side ----------------------------------------------------------------------
    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.options.ae_title)
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        if self.options.allow_ae:
            ae.require_calling_aet = list(self.options.allow_ae)
        ae.maximum_associations = 16
        ae.network_timeout = ae.dimse_timeout = 120
        return ae

    def _handlers(self) -> list[EventHandlerType]:
        return [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_REJECTED, self._on_rejected),
                (evt.EVT_RELEASED, self._on_closed), (evt.EVT_ABORTED, self._on_closed)]

    def _on_accepted(self, event: Any) -> None:
        requestor = event.assoc.requestor
        with self._guard:
            self._associations[id(event.assoc)] = _Association(str(requestor.ae_title),
                                                               f"{requestor.address}:{requestor.port}")

    def _on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        self.log(f"refused an association from AE {requestor.ae_title} at {requestor.address}: not in --allow-ae")

    def _on_echo(self, event: Any) -> int:
        self.log(f"C-ECHO from AE {event.assoc.requestor.ae_title} at {event.assoc.requestor.address}")
        return _SUCCESS

    def _on_store(self, event: Any) -> int:
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        with self._guard:
            state = self._associations.get(id(event.assoc))
        try:
            series = str(getattr(event.dataset, "SeriesInstanceUID", "") or "") or "no-series-uid"
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # a dataset pynetdicom / pydicom cannot decode: refuse it, say why
            self.log(f"refused instance {sop_uid}: cannot read it ({str(exc).splitlines()[0][:120]})")
            if state is not None:
                state.refused += 1
            return _CANNOT_UNDERSTAND
        if self._stop.is_set():
            return _OUT_OF_RESOURCES  # shutting down: the sender keeps it and may send it again
        try:
            self.spool.receive(series, sop_uid, data)
        except OSError as exc:
            self.log(f"refused instance {sop_uid}: cannot write to the spool ({exc.strerror or exc})")
            if state is not None:
                state.refused += 1
            return _OUT_OF_RESOURCES
        if state is not None:
            state.instances += 1
            state.series.add(series)
        return _SUCCESS

    def _on_closed(self, event: Any) -> None:
        with self._guard:
            state = self._associations.pop(id(event.assoc), None)
        if state is None or not (state.instances or state.refused):
            return
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        refused = f", refused {state.refused}" if state.refused else ""
        self.log(f"received {state.instances} instances of {len(state.series)} series from AE {state.ae_title} "
                 f"at {state.address}{refused} (association {how})")

    # -- the work ----------------------------------------------------------------------------
    def _warm_up(self) -> None:
        """Load the model once now, so the first series does not pay for it."""
        options = self.options
        started = time.perf_counter()
        params = predict_parameters(options.model.card, options.workflow)  # as the predict step will ask
        with RUNNERS.lock(options.model.card.id, options.device):
            RUNNERS.get(options.model, options.device, params)
        self.log(f"model {options.model.card.id} loaded on {options.device} in {time.perf_counter() - started:.1f} s")

    def _work(self) -> None:
        for batch in self.spool.claimed():
            if self._stop.is_set():
                return
            self._process(batch)
        while not self._stop.is_set():
            self._retry_forwards()
            for series in self.spool.quiet_series(self.options.series_timeout):
                if self._stop.is_set():
                    return
                claimed = self.spool.claim(series)
                if claimed is not None:
                    self._process(claimed)
            self._stop.wait(self.options.poll_interval)

    def _process(self, batch: Path) -> None:
        """Run the model on one claimed series, write its outputs, forward them; never raises.

        A series the model does not take (another modality, too few slices) is dropped with its
        reason; one that was taken but could not be done (a check refused it, the model failed)
        keeps its instances under the spool's ``failed/`` for a person to look at.
        """
        series = self.spool.series_of(batch)
        options = self.options
        count = sum(1 for _ in batch.glob("*.dcm"))
        output = options.output / series
        self.log(f"series {series}: {count} instances, running {options.model.card.id}")
        started = time.perf_counter()
        pipeline = Pipeline(options.model, RunOptions(input_path=batch, output_dir=output, workflow=options.workflow,
                                                      device=options.device, template="{model}",
                                                      input_label=f"dicom-listener:{series}"))
        problem, crashed = "", False
        try:
            report = pipeline.run()
        except MedhubError as exc:  # nothing could be done: not suitable for the model, no readable image
            report, problem = pipeline.report, str(exc)
        except Exception as exc:  # a bug: keep the instances, go on with the next series
            report, crashed = pipeline.report, True
            problem = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        self.processed += 1
        elapsed = time.perf_counter() - started
        # an implausible result is written but never forwarded: its instances are kept for a person to look at
        unfinished = [e for e in report.series if e.status in (Status.FAILED, Status.SKIPPED, Status.IMPLAUSIBLE)]
        if crashed or unfinished:
            kept = self.spool.fail(batch)
            status = "failed" if crashed else unfinished[0].status.value
            reason = problem or unfinished[0].reason
            self.log(f"series {series}: {status} in {elapsed:.1f} s: {reason}; instances kept in {kept}")
            return
        self.spool.finish(batch)
        if problem:
            self.log(f"series {series}: not processed: {problem}")
            return
        outputs = ", ".join(str(output / o) for e in report.series for o in e.outputs)
        self.log(f"series {series}: done in {elapsed:.1f} s: " + (f"wrote {outputs}" if outputs else "no output"))
        files = [output / o for e in report.series for o in e.outputs if o.endswith(PUSHED_SUFFIXES)]
        if options.forward and files:
            self._forward(series, files, None)

    def _forward(self, series: str, files: list[Path], entry: OutboxEntry | None) -> bool:
        """Push one series' results; on failure keep them in the outbox for a later try."""
        assert self.options.forward is not None
        try:
            stored = push(files, self.options.forward)
        except MedhubError as exc:
            attempts = 1 if entry is None else entry.attempts + 1
            wait = min(self.options.retry_interval * 2 ** (attempts - 1), _MAX_RETRY_WAIT)
            if entry is None:
                self.spool.add_outbox(series, files, time.time() + wait)
            else:
                entry.attempts, entry.next_try = attempts, time.time() + wait
                self.spool.save_outbox(entry)
            self.log(f"series {series}: forward failed ({exc}); trying again in {wait:g} s")
            return False
        if entry is not None:
            entry.path.unlink(missing_ok=True)
        self.log(f"series {series}: forwarded {len(stored)} of {len(files)} to {label(self.options.forward)}")
        return True

    def _retry_forwards(self) -> None:
        if not self.options.forward:
            return
        now = time.time()
        for entry in self.spool.outbox_entries():
            if self._stop.is_set() or entry.next_try > now:
                continue
            present = [Path(f) for f in entry.files if Path(f).is_file()]
            if not present:  # the results were removed by a person: nothing left to send
                entry.path.unlink(missing_ok=True)
                continue
            self._forward(entry.series, present, entry)
