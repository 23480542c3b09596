"""Capture of ``torch.utils.tensorboard.SummaryWriter`` calls into the active tracelet run.

Training code that already writes TensorBoard keeps doing so: while a run started by
:func:`tracelet.start_logging` is active, ``add_scalar``, ``add_scalars``,
``add_hparams``, ``add_image`` and ``add_text`` also reach tracelet. The writer's own
event files are written first and stay complete; a captured call that tracelet cannot
take is logged as a warning and never raises into training. ``stop_logging`` undoes
the patch, so a writer used afterwards is not captured. ``TRACELET_TRACK_TENSORBOARD=0``
turns capture off.

The patch is installed on the class when ``torch.utils.tensorboard`` is already
imported, and otherwise when it is first imported (an import hook), so starting a run
never imports torch or tensorboard.

How TensorBoard names become tracelet keys (``docs/integrations.md`` has the table):

* a tag keeps its spelling where tracelet's character set allows it; any other
  character becomes ``_``, empty or ``.``/``..`` segments are dropped, a name that does
  not start with a letter or digit (or starts with the reserved ``tracelet``) gets
  ``tb/`` in front, and an over-long name is cut and suffixed with a hash;
* ``add_scalars("loss", {"train": v})`` is, in TensorBoard, tag ``loss`` in the
  sub-run ``loss_train``: the key is ``loss_train/loss``, the run directory then the
  tag, as TensorBoard shows it. It never meets ``add_scalar("loss/train")``;
* when two sources would land on one key (two writers in different directories, such
  as ``runs/train`` and ``runs/val``, both writing ``loss``), the later one is put under
  its writer directory's name (``val/loss``), and failing that numbered (``loss-2``):
  a key only ever holds one TensorBoard series;
* ``global_step=None`` counts on from the key's last step (TensorBoard would store 0,
  and a store keyed by step would keep only the last point);
* ``add_hparams`` logs its hyperparameters as params and its metrics under their own
  names; ``add_image`` logs an image; ``add_text`` logs ``text/<tag>/<step>.txt``.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import logging
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from tracelet.experiment import Experiment
from tracelet.validation import MAX_NAME_LENGTH, safe_name

log = logging.getLogger(__name__)

WRITER_MODULE = "torch.utils.tensorboard.writer"
CAPTURED_METHODS = ("add_scalar", "add_scalars", "add_hparams", "add_image", "add_text")

#: Lightning's TensorBoardLogger methods whose writes a TraceletLogger in the same Trainer
#: already sends (the same ``self.log`` values): captured twice, they would be duplicates.
LIGHTNING_TB_MODULES = frozenset(
    {
        "lightning.pytorch.loggers.tensorboard",
        "lightning.fabric.loggers.tensorboard",
        "pytorch_lightning.loggers.tensorboard",
        "lightning_fabric.loggers.tensorboard",
    }
)
LIGHTNING_TB_METHODS = frozenset({"log_metrics", "log_hyperparams", "log_graph"})
#: How many frames up a captured call looks for one of those methods.
LIGHTNING_FRAME_DEPTH = 8

_state = threading.local()
_fed_by_lightning: weakref.WeakSet[Experiment] = weakref.WeakSet()


def mark_fed_by_lightning(experiment: Experiment) -> None:
    """A TraceletLogger sends Lightning's values to ``experiment``: skip its TensorBoardLogger's copies."""
    _fed_by_lightning.add(experiment)


def _step(global_step: Any) -> int | None:
    """TensorBoard steps may be ints, numpy ints, 0-d tensors or integral floats."""
    if global_step is None:
        return None
    if hasattr(global_step, "item"):
        global_step = global_step.item()
    if isinstance(global_step, float) and global_step.is_integer():
        global_step = int(global_step)
    if isinstance(global_step, bool) or not isinstance(global_step, int):
        raise TypeError(f"global_step must be an integer, not {type(global_step).__name__}")
    return global_step


def _to_hwc(image: Any, dataformats: str) -> Any:
    """TensorBoard's image layouts (``CHW``, ``HWC``, ``HW``, ``WH``, ...) as an H×W×C numpy array."""
    import numpy as np

    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    layout = dataformats.upper()
    if len(layout) != array.ndim or set(layout) - set("CHW"):
        raise ValueError(f"image of shape {array.shape} does not match dataformats {dataformats!r}")
    if "C" not in layout:
        array, layout = array[..., None], layout + "C"
    array = np.transpose(array, [layout.index(axis) for axis in "HWC"])
    if array.dtype == np.uint8:
        return array
    # TensorBoard scales every non-uint8 image by 255 and clips (``summary.image``).
    return (np.clip(array.astype(np.float32) * 255.0, 0, 255)).astype(np.uint8)


class _Keys:
    """Which TensorBoard series owns each tracelet key, so two series never share one."""

    def __init__(self) -> None:
        self._by_source: dict[tuple[str, str, str], str] = {}
        self._owner: dict[str, tuple[str, str, str]] = {}

    def key(self, logdir: str, run: str, tag: str, kind: str = "") -> str:
        """The key of ``tag`` in TensorBoard run ``run`` (``""``: the writer's own) under ``logdir``.

        ``kind`` keeps apart series that TensorBoard files elsewhere but names alike
        (``add_hparams`` metrics), without showing up in the key.
        """
        source = (logdir, f"{kind}{run}", tag)
        found = self._by_source.get(source)
        if found is not None:
            return found
        base = safe_name(f"{run}/{tag}" if run else tag)
        candidates = [base, safe_name(f"{Path(logdir).name}/{base}")]
        key = next((c for c in candidates if c not in self._owner), None)
        number = 2
        while key is None:
            numbered = safe_name(f"{base[: MAX_NAME_LENGTH - 8]}-{number}")
            key, number = (numbered if numbered not in self._owner else None), number + 1
        if key != base or base != tag:
            log.info("tracelet: TensorBoard %r (run %r in %s) is logged as %r", tag, run or ".", logdir, key)
        self._by_source[source] = key
        self._owner[key] = source
        return key


class TensorBoardCapture:
    """Sends one experiment's share of ``SummaryWriter`` calls to it, until :meth:`uninstall`."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self._keys = _Keys()  # metrics
        self._text_keys = _Keys()  # text files: artifacts, a namespace of their own
        self._originals: dict[str, Callable[..., Any]] = {}
        self._writer_class: type | None = None
        self._finder: _WriterImportHook | None = None
        self._warned: set[str] = set()
        self._text_steps: dict[str, int] = {}

    # -- patching -------------------------------------------------------------------------
    def install(self) -> None:
        """Patch ``SummaryWriter`` now if it is imported, else as soon as it is."""
        module = sys.modules.get(WRITER_MODULE)
        if module is not None:
            self._patch(module)
        else:
            self._finder = _WriterImportHook(self._patch)
            sys.meta_path.insert(0, self._finder)

    def uninstall(self) -> None:
        """Put every original method back and drop the import hook."""
        if self._finder is not None:
            if self._finder in sys.meta_path:
                sys.meta_path.remove(self._finder)
            self._finder = None
        if self._writer_class is not None:
            for name, original in self._originals.items():
                setattr(self._writer_class, name, original)
        self._originals.clear()
        self._writer_class = None

    def _patch(self, module: ModuleType) -> None:
        if self._finder is not None and self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        self._finder = None
        writer = getattr(module, "SummaryWriter", None)
        if writer is None:
            log.warning("tracelet: %s has no SummaryWriter; TensorBoard is not captured", WRITER_MODULE)
            return
        self._writer_class = writer
        handlers: dict[str, Callable[..., None]] = {
            "add_scalar": self._scalar,
            "add_scalars": self._scalars,
            "add_hparams": self._hparams,
            "add_image": self._image,
            "add_text": self._text,
        }
        for name in CAPTURED_METHODS:
            original = writer.__dict__.get(name)
            if original is None:
                continue
            self._originals[name] = original
            setattr(writer, name, self._wrap(name, original, handlers[name]))

    def _wrap(
        self, name: str, original: Callable[..., Any], handler: Callable[..., None]
    ) -> Callable[..., Any]:
        capture = self

        @functools.wraps(original)
        def captured(writer: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(_state, "inside", False):  # add_hparams calls add_scalar on a writer of its own
                return original(writer, *args, **kwargs)
            _state.inside = True
            try:
                result = original(writer, *args, **kwargs)
            finally:
                _state.inside = False
            if capture.experiment in _fed_by_lightning and _called_by_lightning_logger(sys._getframe(1)):
                return result
            try:
                handler(writer, *args, **kwargs)
            except Exception as exc:  # never into training: say so once per method and name
                capture._warn(name, args, exc)
            return result

        return captured

    def _warn(self, method: str, args: Sequence[Any], exc: Exception) -> None:
        what = f"{method}({args[0]!r})" if args and isinstance(args[0], str) else method
        if what not in self._warned:
            self._warned.add(what)
            log.warning("tracelet: TensorBoard %s was not captured: %s", what, exc)

    # -- what each call becomes -----------------------------------------------------------
    def _scalar(
        self, writer: Any, tag: str, scalar_value: Any, global_step: Any = None, *_: Any, **__: Any
    ) -> None:
        key = self._keys.key(writer.get_logdir(), "", tag)
        self.experiment.log_metric(key, scalar_value, _step(global_step))

    def _scalars(
        self,
        writer: Any,
        main_tag: str,
        tag_scalar_dict: dict[str, Any],
        global_step: Any = None,
        *_: Any,
        **__: Any,
    ) -> None:
        step = _step(global_step)
        logdir = writer.get_logdir()
        for tag, value in tag_scalar_dict.items():
            run = main_tag.replace("/", "_") + "_" + tag  # TensorBoard's own sub-run name
            self.experiment.log_metric(self._keys.key(logdir, run, main_tag), value, step)

    def _hparams(
        self, writer: Any, hparam_dict: dict[str, Any], metric_dict: dict[str, Any], *args: Any, **kwargs: Any
    ) -> None:
        step = _step(kwargs.get("global_step", args[2] if len(args) > 2 else None))
        try:
            self.experiment.log_params({safe_name(k): _plain(v) for k, v in hparam_dict.items()})
        finally:
            logdir = writer.get_logdir()
            for tag, value in metric_dict.items():
                self.experiment.log_metric(self._keys.key(logdir, "", tag, kind="hparams:"), value, step)

    def _image(
        self,
        writer: Any,
        tag: str,
        img_tensor: Any,
        global_step: Any = None,
        walltime: Any = None,
        dataformats: str = "CHW",
        **__: Any,
    ) -> None:
        key = self._keys.key(writer.get_logdir(), "", tag)
        self.experiment.log_image(key, _to_hwc(img_tensor, dataformats), _step(global_step))

    def _text(
        self, writer: Any, tag: str, text_string: str, global_step: Any = None, *_: Any, **__: Any
    ) -> None:
        key = self._text_keys.key(writer.get_logdir(), "", tag)
        step = _step(global_step)
        if step is None:
            step = self._text_steps.get(key, -1) + 1
        self._text_steps[key] = step
        with tempfile.TemporaryDirectory(prefix="tracelet-tb-text-") as folder:
            path = Path(folder) / f"{step}.txt"
            path.write_text(str(text_string), encoding="utf-8")
            self.experiment.log_artifact(path, f"text/{key}")


def _plain(value: Any) -> Any:
    """A hyperparameter as TensorBoard shows it: tensors and numpy scalars as Python numbers."""
    return value.item() if hasattr(value, "item") else value


def _called_by_lightning_logger(frame: FrameType | None) -> bool:
    for _ in range(LIGHTNING_FRAME_DEPTH):
        if frame is None:
            return False
        if (
            frame.f_code.co_name in LIGHTNING_TB_METHODS
            and frame.f_globals.get("__name__") in LIGHTNING_TB_MODULES
        ):
            return True
        frame = frame.f_back
    return False


class _WriterImportHook(importlib.abc.MetaPathFinder):
    """Patches ``SummaryWriter`` right after ``torch.utils.tensorboard.writer`` is first imported."""

    def __init__(self, on_import: Callable[[ModuleType], None]) -> None:
        self._on_import = on_import

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname != WRITER_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(loader, self._on_import)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, on_import: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._on_import = on_import

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._on_import(module)


def start_capture(experiment: Experiment) -> TensorBoardCapture:
    """Capture ``SummaryWriter`` calls into ``experiment`` until the returned capture is uninstalled."""
    capture = TensorBoardCapture(experiment)
    capture.install()
    return capture


__all__ = ["TensorBoardCapture", "mark_fed_by_lightning", "start_capture"]
