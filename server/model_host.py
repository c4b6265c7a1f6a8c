"""Finds, converts and loads the model in the background, and says what state it is in.

Conversion runs in a subprocess (the server never imports torch); loading runs on a thread. Neither
ever blocks the event loop: requests that arrive meanwhile wait a bounded time, then get nothing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ghostls.completion.settings import Settings
from ghostls.inference.backend import LocalBackend
from ghostls.inference.cache import ModelError
from ghostls.inference.engine import Engine
from ghostls.inference.fim import FimTemplate, template_by_name

log = logging.getLogger(__name__)


class ModelState(str, enum.Enum):
    STARTING = "starting"
    CONVERTING = "converting"
    LOADING = "loading"
    READY = "ready"
    ERROR = "error"


@dataclass(frozen=True)
class ModelStatus:
    state: ModelState
    detail: str = ""
    model: str = ""
    provider: str = ""
    template: str = ""


@dataclass(frozen=True)
class LoadedModel:
    engine: Engine
    template: FimTemplate

    @property
    def backend(self) -> LocalBackend:
        return LocalBackend(self.engine, self.template)


def resolve_model_dir(settings: Settings, progress: Callable[[str, float], None]) -> Path:
    """Returns a converted model folder for the settings, converting on first use."""
    from ghostls.inference import embedded
    from ghostls.inference.converter import convert

    if settings.model is None:
        return embedded.ensure_embedded_model(progress=progress, in_subprocess=True)
    source = Path(settings.model).expanduser()
    if not source.exists():
        raise ModelError(f"model path {source} does not exist")
    if source.is_dir() and (source / "genai_config.json").is_file():
        return source  # a folder ghostls converted (the Engine checks its manifest)
    return convert.convert_in_subprocess(source, settings.precision, progress)


class ModelHost:
    """Owns the one loaded model. `on_status` and `on_progress` are called from a worker thread."""

    def __init__(self, on_status: Callable[[ModelStatus], None],
                 on_progress: Callable[[str, float], None]):
        self._on_status = on_status
        self._on_progress = on_progress
        self._loaded: LoadedModel | None = None
        self.status = ModelStatus(ModelState.STARTING)
        self._ready = threading.Event()  # set once loading ended, in success or failure

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def start(self, settings: Settings) -> None:
        """Starts (or restarts, after a model change) loading in the background."""
        self._ready.clear()
        self._loaded = None
        if not settings.uses_local_model():
            # Every language goes to a remote engine: loading (or converting) a local model would only cost.
            remote = settings.backend
            self._set(ModelStatus(ModelState.READY, f"remote engine {remote.describe()}", remote.model or "remote",
                                  "remote", remote.template().family))
            self._ready.set()
            return
        threading.Thread(target=self._load, args=(settings,), name="ghostls-model", daemon=True).start()

    async def wait(self, timeout_s: float) -> LoadedModel | None:
        """The loaded model, waiting up to `timeout_s` for one that is still loading."""
        if self._loaded is None and not self._ready.is_set() and timeout_s > 0:
            await asyncio.get_running_loop().run_in_executor(None, self._ready.wait, timeout_s)
        return self._loaded

    def _set(self, status: ModelStatus) -> None:
        self.status = status
        try:
            self._on_status(status)
        except Exception:  # noqa: BLE001 - a reporting failure must not stop the load
            log.exception("status callback failed")

    def _load(self, settings: Settings) -> None:
        try:
            self._set(ModelStatus(ModelState.CONVERTING, "preparing the model"))
            model_dir = resolve_model_dir(settings, self._on_progress)
            self._set(ModelStatus(ModelState.LOADING, f"loading {model_dir.name}", model_dir.name))
            engine = Engine(model_dir, provider=settings.provider, kv_budget_bytes=settings.kv_cache_mb * 2**20)
            template = _template_for(settings, engine)
            self._loaded = LoadedModel(engine, template)
            self._set(ModelStatus(ModelState.READY, f"{model_dir.name} ready in {engine.load_s:.2f}s",
                                  model_dir.name, engine.provider.name, template.family))
            log.info("execution provider: %s (%s)", engine.provider.name, engine.provider.reason)
            if not template.uses_suffix:
                try:
                    engine.vocabulary()  # token healing's table, built now rather than in the first request that heals
                except Exception:  # noqa: BLE001 - the model is ready; a request that heals will say what failed
                    log.exception("token healing's vocabulary could not be built")
        except ModelError as exc:
            self._set(ModelStatus(ModelState.ERROR, str(exc)))
        except Exception as exc:  # noqa: BLE001 - any failure leaves a serving (empty) server
            log.exception("model load failed")
            self._set(ModelStatus(ModelState.ERROR, f"model load failed: {exc}"))
        finally:
            self._ready.set()


def _template_for(settings: Settings, engine: Engine) -> FimTemplate:
    """The template named in settings, else the family the converter detected from the tokenizer."""
    name = engine.manifest.fim_family if settings.fim_template == "auto" else settings.fim_template
    return template_by_name(name)
