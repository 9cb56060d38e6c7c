"""lm-eval tasks, from the real sources or from the offline copies under ``SDLIB_DATA_DIR``.

The tasks are lm-eval's own (``lambada_openai``, ``wikitext``): their prompts, scoring and aggregation come
from lm-eval's task files, never re-derived here. Offline, a generated task folder holds one YAML per task
that ``include``s lm-eval's file and only swaps the dataset for local JSON lines (``dataset_path: json``). The
folder is checked byte for byte against what it must hold every time it is used, and rebuilt from nothing when
anything differs or anything else is there: lm-eval reads every YAML on its include path, and a YAML can import
Python, so nothing planted there is ever read.
WikiText's document-level pages are rebuilt from the raw file with the rule of ``data/README.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sdlib.data import offline_file
from sdlib.errors import SdlibError
from sdlib.paths import cache_dir
from sdlib.provenance import file_sha256, fsync_tree

TASKS = ("lambada_openai", "wikitext")


@dataclass(frozen=True)
class OfflineSource:
    """Where a task's data lives under SDLIB_DATA_DIR, and the lm-eval task file it stands in for."""

    task: str
    hf_dataset: str
    files: dict[str, str]  # split -> file relative to SDLIB_DATA_DIR
    lm_eval_yaml: str  # relative to lm_eval/tasks


OFFLINE = {
    "lambada_openai": OfflineSource("lambada_openai", "EleutherAI/lambada_openai (default, test)",
                                    {"test": "lambada_openai/test.jsonl"}, "lambada/lambada_openai.yaml"),
    "wikitext": OfflineSource("wikitext", "EleutherAI/wikitext_document_level (wikitext-2-raw-v1)",
                              {"test": "wikitext-2-raw-v1/wiki.test.raw",
                               "validation": "wikitext-2-raw-v1/wiki.valid.raw"}, "wikitext/wikitext.yaml"),
}


def check_tasks(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
    """Parse ``"a,b"`` or a list into task names, refusing unknown ones with one clear line."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise SdlibError(f"unknown task(s) {', '.join(unknown) or '(none given)'}: use {', '.join(TASKS)}")
    return names


def wikitext_pages(raw: str) -> list[str]:
    """Split a raw WikiText file into EleutherAI/wikitext_document_level ``page`` strings.

    The rule (data/README.md): split on "\\n"; a line whose normalised copy (``= = =`` -> ``===``,
    ``= =`` -> ``==``, stripped) starts with ``"= "`` and ends with ``" ="`` starts a new page, after the
    lines so far are emitted as a page when not blank; every line is appended to the current page; the
    last page is emitted unconditionally.
    """
    pages: list[str] = []
    current: list[str] = []
    for line in raw.split("\n"):
        norm = line.replace("= = =", "===").replace("= =", "==").strip()
        if norm.startswith("= ") and norm.endswith(" ="):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    pages.append("\n".join(current))
    return pages


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def _check_jsonl(path: Path, field: str) -> None:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                if not isinstance(row.get(field), str):
                    raise KeyError(field)
            except (json.JSONDecodeError, KeyError, AttributeError):
                raise SdlibError(f"{path}, line {number}: not a JSON object with a string {field!r} field; "
                                 "restore the file (data/README.md gives its source and sha256)") from None


def offline_task_dir(names: list[str] | tuple[str, ...] = TASKS) -> Path | None:
    """Generate (once per data content) the offline folder of tasks ``names``; None when SDLIB_DATA_DIR is unset.

    Every data file is checked first (present, non-empty, the expected sha256, valid JSON lines), so a
    damaged copy fails here with one line naming the file, not deep inside lm-eval.
    """

    files = {name: {split: offline_file(rel, f"{name} ({OFFLINE[name].hf_dataset})")
                    for split, rel in OFFLINE[name].files.items()} for name in check_tasks(list(names))}
    if all(p is None for split in files.values() for p in split.values()):
        return None
    if "lambada_openai" in files:
        _check_jsonl(files["lambada_openai"]["test"], "text")
    key = hashlib.sha256(json.dumps({n: {s: file_sha256(p) for s, p in f.items()} for n, f in files.items()},
                                    sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "lm_eval_tasks" / key
    expected = _task_files(files, folder)
    if not _holds_exactly(folder, expected):  # anything changed, missing or planted there: rebuild from nothing
        _write_folder(folder, expected)
    return folder


def _task_files(files: dict[str, dict[str, Path]], folder: Path) -> dict[str, bytes]:
    """name -> content of every file the offline task folder must hold (its YAMLs and WikiText's pages)."""
    out: dict[str, bytes] = {}
    data_files = {name: {split: str(path) for split, path in splits.items()} for name, splits in files.items()}
    for split, raw_path in files.get("wikitext", {}).items():
        pages = wikitext_pages(raw_path.read_text(encoding="utf-8"))
        out[f"wikitext-{split}.jsonl"] = "".join(json.dumps({"page": p}) + "\n" for p in pages).encode()
        data_files["wikitext"][split] = str(folder / f"wikitext-{split}.jsonl")
    lm_tasks = _lm_eval_tasks_dir()
    for name in files:
        src = OFFLINE[name]
        cfg = {"include": str(lm_tasks / src.lm_eval_yaml), "dataset_path": "json", "dataset_name": None,
               "dataset_kwargs": {"data_files": data_files[name]},
               "training_split": None,  # zero-shot only: the offline copies hold no training split
               "metadata": {"sdlib_offline_copy_of": src.hf_dataset}}
        out[f"{name}.yaml"] = (f"# generated by sdlib from SDLIB_DATA_DIR: {src.hf_dataset}\n"
                               + json.dumps(cfg, indent=2)).encode()
    return out


def _holds_exactly(folder: Path, expected: dict[str, bytes]) -> bool:
    """True when ``folder`` holds these files with these bytes and nothing else (lm-eval reads every YAML under
    its include path, and a YAML's ``!function`` imports Python beside it: nothing else may be there)."""
    if not folder.is_dir():
        return False
    found = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*")}
    if set(found) != set(expected):
        return False
    return all(found[name].is_file() and not found[name].is_symlink() and found[name].read_bytes() == content
               for name, content in expected.items())


def _write_folder(folder: Path, expected: dict[str, bytes]) -> None:
    """Replace ``folder`` by one holding exactly ``expected``, built beside it and renamed into place."""
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for name, content in expected.items():
            (tmp / name).write_bytes(content)
        fsync_tree(tmp)
        if folder.exists() or folder.is_symlink():
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
            else:
                folder.unlink()
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def data_provenance(names: list[str] | tuple[str, ...] = TASKS) -> dict[str, str]:
    """task/split -> source id (``hf:...`` online, ``sha256:...`` of the checked offline file) for the records."""

    out = {}
    for name in check_tasks(list(names)):
        src = OFFLINE[name]
        for split, rel in src.files.items():
            path = offline_file(rel, f"{name} ({src.hf_dataset})")
            out[f"{name}/{split}"] = f"sha256:{file_sha256(path)}" if path is not None else f"hf:{src.hf_dataset}"
    return out


def load_tasks(names: list[str]) -> dict:
    """lm-eval Task objects by name: offline copies when SDLIB_DATA_DIR is set, the real datasets otherwise.
    Loaded once per process (lm-eval's task index and the datasets are slow to build); each evaluation
    rebuilds its requests with ``build_all_requests``."""
    include = offline_task_dir(names)
    return dict(_load_tasks(tuple(names), str(include) if include else None))


@lru_cache(maxsize=8)
def _load_tasks(names: tuple[str, ...], include: str | None) -> tuple:
    import datasets

    manager = _task_manager(include)
    quiet = include is not None and not datasets.are_progress_bars_disabled()
    if quiet:  # building the local copies takes a second; its bar ("Generating test split: 0 examples") has no total
        datasets.disable_progress_bars()
    try:
        loaded = manager.load(list(names))["tasks"]
    except Exception as err:  # datasets raises many types for "no network"
        if include is not None:
            raise
        raise SdlibError(
            f"could not load {', '.join(OFFLINE[n].hf_dataset for n in names)} from the Hugging Face hub "
            f"({type(err).__name__}); offline, set SDLIB_DATA_DIR to a folder holding "
            f"{', '.join(r for n in names for r in OFFLINE[n].files.values())} (laid out as data/README.md says)"
        ) from err
    finally:
        if quiet:
            datasets.enable_progress_bars()
    return tuple((name, loaded[name]) for name in names)


@lru_cache(maxsize=4)
def _task_manager(include: str | None):
    """lm-eval's TaskManager over the folders of sdlib's own tasks, then the offline folder when there is one (its
    tasks override lm-eval's of the same name). Indexing every task lm-eval ships (some 15,000 YAML files) would
    take ~20 s of every process that evaluates."""
    import logging

    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # "task X overrides existing task" is intended
    lm_tasks = _lm_eval_tasks_dir()
    folders = sorted({str((lm_tasks / src.lm_eval_yaml).parent) for src in OFFLINE.values()})
    return TaskManager(include_path=folders + ([include] if include else []), include_defaults=False)


def task_manager(names: list[str] | tuple[str, ...] = TASKS):
    """A TaskManager that sees the offline tasks when SDLIB_DATA_DIR is set (for ``simple_evaluate``)."""
    include = offline_task_dir(names)
    return _task_manager(str(include) if include else None)
