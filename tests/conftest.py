"""Fixtures: tiny random models built from local configs (no hub), and the real models exported
once per test run."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")



def _shared_dir() -> Path:
    """../shared beside the checkout, or EDGEINFER_SHARED, or the workplace's /work/shared."""
    candidates = [os.environ.get("EDGEINFER_SHARED"), Path(__file__).resolve().parents[2] / "shared", "/work/shared"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return Path(__file__).resolve().parents[2] / "shared"


SHARED = _shared_dir()
SST2 = SHARED / "data" / "sst2"
MINILM_SST2 = SHARED / "models" / "minilm-sst2"

WORDS = ("good great bad awful movie film plot actor story fun dull bright dark slow fast kind cold warm "
         "happy sad long short new old city river phone laptop music game team match rain sun").split()


def _tokenizer(directory: Path, family: str) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if family in ("roberta", "mpnet"):
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        cls, sep, pad, unk, mask = specials if family == "roberta" else ("<s>", "</s>", "<pad>", "<unk>", "<mask>")
    else:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        pad, unk, cls, sep, mask = specials
    vocab = {token: i for i, token in enumerate(specials + list(WORDS))}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=unk))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=unk, pad_token=pad, cls_token=cls,
                                   sep_token=sep, mask_token=mask)
    fast.save_pretrained(str(directory))


def build_tiny_model(directory: Path, family: str, task: str, layers: int = 3, seed: int = 0) -> Path:
    import torch
    from transformers import (AutoModel, AutoModelForSequenceClassification, BertConfig, DistilBertConfig,
                              MPNetConfig, RobertaConfig)

    torch.manual_seed(seed)
    vocab_size = 5 + len(WORDS)
    common = dict(vocab_size=vocab_size, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    if family == "bert":
        config = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=128, pad_token_id=0, **common)
    elif family == "roberta":
        config = RobertaConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=130, pad_token_id=1,
                               bos_token_id=0, eos_token_id=2, **common)
    elif family == "mpnet":  # no adapter: exported whole, through Optimum (export/whole_model.py)
        config = MPNetConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                             max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2, **common)
    elif family == "distilbert":
        config = DistilBertConfig(dim=32, n_layers=layers, n_heads=4, hidden_dim=64, max_position_embeddings=128,
                                  pad_token_id=0, **common)
    else:
        raise ValueError(family)
    loader = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    model = loader.from_config(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    _tokenizer(directory, family)
    return directory


def write_calibration(path: Path, n: int = 120, labels: bool = True, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = ["sentence\tlabel"] if labels else []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(2, 12))
        text = " ".join(words)
        lines.append(f"{text}\t{rng.randint(0, 1)}" if labels else text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def transformers_reference(model_dir: Path, task: str, input_ids, attention_mask, normalize: bool):
    """What the Hugging Face model itself answers (class probabilities, or the mean-pooled embedding):
    the independent reference the exported graphs are checked against."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    loader = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    model = loader.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask))
    if task == "text-classification":
        return torch.softmax(out.logits, -1)[0].numpy()
    mask = torch.from_numpy(attention_mask)[..., None].float()
    pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    return (torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled)[0].numpy()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {(family, task): build_tiny_model(root / f"{family}-{task}", family, task)
            for family in ("bert", "roberta", "distilbert")
            for task in ("feature-extraction", "text-classification")}


PLAIN_RECIPE = {"train_exits": "heads", "exit_head": "pooler", "quant": "none"}


def plain_options(**fields):
    """Export options without the default recipe's joint training and int8 variant: heads on a frozen
    backbone, the fast path the many small tests share (the default recipe has tests of its own)."""
    from edgeinfer.export.pipeline import ExportOptions

    return ExportOptions(**{**PLAIN_RECIPE, **fields})


@pytest.fixture(scope="session")
def tiny_calibration(tmp_path_factory) -> Path:
    # 200 threshold texts: enough for the 0.95 level to let a few exits answer
    return write_calibration(tmp_path_factory.mktemp("calib") / "calib.tsv", n=400)


@pytest.fixture(scope="session")
def tiny_packages(tiny_models, tiny_calibration, tmp_path_factory) -> dict[tuple[str, str], Path]:
    from edgeinfer.export.pipeline import export_model

    root = tmp_path_factory.mktemp("tiny-packages")
    packages = {}
    for (family, task), directory in tiny_models.items():
        out = root / f"{family}-{task}.edge"
        export_model(str(directory), out, plain_options(task=task, calib=str(tiny_calibration), max_length=64))
        packages[(family, task)] = out
    return packages


@pytest.fixture(scope="session")
def quantized(tiny_packages, tiny_calibration, tmp_path_factory) -> Path:
    """The tiny BERT classifier with an int8 variant (its own thresholds, calibrated on 400 texts)."""
    from edgeinfer.quant.quantize import quantize_package

    os.environ["EDGEINFER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("quant") / "int8.edge"
    texts = [line.split("\t")[0] for line in tiny_calibration.read_text().splitlines()[1:]]
    quantize_package(tiny_packages[("bert", "text-classification")], texts, "int8", output=out)
    return out


@pytest.fixture(scope="session")
def quantized_embedder(tiny_packages, tiny_calibration, tmp_path_factory) -> Path:
    """The tiny BERT feature extractor with an int8 variant (what search indexes embed queries with)."""
    from edgeinfer.quant.quantize import quantize_package

    out = tmp_path_factory.mktemp("quant-embedder") / "e.edge"
    texts = [line.split("\t")[0] for line in tiny_calibration.read_text().splitlines()[1:]][:200]
    quantize_package(tiny_packages[("bert", "feature-extraction")], texts, "int8", output=out)
    return out


@pytest.fixture(scope="session")
def minilm_package(tmp_path_factory) -> Path:
    from edgeinfer.export.pipeline import export_model

    out = tmp_path_factory.mktemp("minilm") / "m.edge"
    export_model("minilm", out, plain_options(task="feature-extraction"))
    return out


@pytest.fixture(scope="session")
def sst2_package(tmp_path_factory) -> Path:
    if not MINILM_SST2.is_dir():
        pytest.fail(f"{MINILM_SST2} is not on this machine: the SST-2 tests need ../shared beside the checkout "
                    f"(or EDGEINFER_SHARED pointing at it)")
    from edgeinfer.export.pipeline import export_model

    out = tmp_path_factory.mktemp("sst2") / "s.edge"
    export_model(str(MINILM_SST2), out, plain_options(
        task="text-classification", calib=str(SST2 / "train.tsv"), eval_data=str(SST2 / "dev.tsv"),
        head_examples=2000, threshold_examples=1500))
    return out


def build_tiny_llama(directory: Path, layers: int = 4, seed: int = 0) -> Path:
    """A random Llama (GQA) with a word-level tokenizer and a chat template. Untied embeddings: a tied
    random model only repeats its last prompt token, which would make every decoding mode agree trivially
    (the real SmolLM2 test covers tied embeddings)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    specials = ["<pad>", "<eos>", "<unk>", "<user>", "<assistant>"]
    vocab = {token: i for i, token in enumerate(specials + list(WORDS))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<eos>", additional_special_tokens=["<user>", "<assistant>"])
    fast.chat_template = ("{% for m in messages %}<user> {{ m['content'] }} <eos> {% endfor %}"
                          "{% if add_generation_prompt %}<assistant> {% endif %}")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    fast.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def tiny_llama_package(tmp_path_factory) -> Path:
    from edgeinfer.export.decoder.pipeline import DecoderExportOptions, export_decoder
    from edgeinfer.quant.decoder_variant import add_decoder_variant

    root = tmp_path_factory.mktemp("tiny-llama")
    out = root / "llama.edge"
    export_decoder(str(build_tiny_llama(root / "model")), out, DecoderExportOptions(validate_tokens=24))
    add_decoder_variant(out, "q8")
    return out


@pytest.fixture(scope="session")
def smollm2_package(tmp_path_factory) -> Path:
    """The real SmolLM2-135M (built-in GGUF, de-quantised once into the user cache) with its q8 variant."""
    from edgeinfer.export.decoder.pipeline import DecoderExportOptions, export_decoder
    from edgeinfer.quant.decoder_variant import add_decoder_variant

    out = tmp_path_factory.mktemp("smollm2") / "lm.edge"
    export_decoder("smollm2", out, DecoderExportOptions())
    add_decoder_variant(out, "q8")
    return out
