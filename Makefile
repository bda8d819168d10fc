# The README's two commands: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch installs from a local file; an unpinned torch pulls a multi-GB CUDA build.
# Override for a GPU machine, e.g. `make test TORCH_SPEC='torch==2.11.0'`.
TORCH_SPEC ?= torch==2.13.0
# `face` (mediapipe, protobuf < 5) is what enrollment needs; the main environment always has it.
EXTRAS ?= face,dev,train,eval,c2pa
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stream_avatar-installed
# pipecat-ai needs protobuf >= 5.29 and mediapipe 0.10.21 breaks with it, so the pipecat processor
# and its tests get an environment of their own, without the `face` extra.
PIPECAT_VENV ?= .venv-pipecat
PIPECAT_PY := $(PIPECAT_VENV)/bin/python
PIPECAT_STAMP := $(PIPECAT_VENV)/.stream_avatar-installed

.PHONY: install install-pipecat run test lint bench clean train-motion eval-motion train-emotion eval-emotion train-data emotion-data

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

# Without mediapipe the pipecat environment cannot enroll a portrait; the main one enrolls the default
# avatar (256² and 512²) into the per-user avatar store that both environments read.
$(PIPECAT_STAMP): $(STAMP) pyproject.toml Makefile
	test -x $(PIPECAT_PY) || $(PYTHON) -m venv $(PIPECAT_VENV)
	$(PIPECAT_PY) -m pip install -q --upgrade pip
	$(PIPECAT_PY) -c "import torch" 2>/dev/null || $(PIPECAT_PY) -m pip install "$(TORCH_SPEC)"
	$(PIPECAT_PY) -m pip install -e ".[pipecat,test]"
	$(PY) -c "from stream_avatar.avatar.store import AvatarStore; [AvatarStore().resolve(None, size=s) for s in (256, 512)]"
	touch $(PIPECAT_STAMP)

install-pipecat: $(PIPECAT_STAMP)

run: install
	$(PY) -m stream_avatar run

# The pipecat tests skip in .venv (no pipecat there) and run in .venv-pipecat.
test: install install-pipecat
	$(PY) -m pytest
	$(PIPECAT_PY) -m pytest tests/test_pipecat.py

lint: install
	$(PY) -m ruff check stream_avatar tests benchmarks examples
	$(PY) -m mypy stream_avatar

bench: install
	$(PY) benchmarks/bench_render.py
	$(PY) benchmarks/bench_motion.py
	$(PY) benchmarks/bench_e2e.py

# The shipped motion model, reproduced with one command (data ~30 min + training ~70 min on 2 cores).
# Resumable: run it again after an interruption and it continues from data/ and models/motion/checkpoint.
MOTION_DATA ?= data/synth-v1
MOTION_VOICES ?= data/synth-voices
# Festival's Italian, Catalan, Czech, Finnish and Russian voices (recorded people) reading English.
MOTION_WORLD ?= data/synth-world
# Real recorded speech: Asterisk's US English prompts (Debian asterisk-core-sounds-en-g722), force-aligned.
MOTION_REAL ?= data/real-prompts
train-data: install
	test -f $(MOTION_DATA)/dataset.json || $(PY) -m stream_avatar data synth --hours 3.2 \
		--languages en,hi,es,de --synthesizers espeak,festival,flite --out $(MOTION_DATA) --seed 0
	test -f $(MOTION_VOICES)/dataset.json || $(PY) -m stream_avatar data synth --hours 1 \
		--languages en --synthesizers festival,flite --out $(MOTION_VOICES) --seed 1
	test -f $(MOTION_WORLD)/dataset.json || $(PY) -m stream_avatar data synth --hours 1.5 \
		--languages it,ca,cs,fi,ru --holdout-language none --synthesizers festival --text-language en \
		--out $(MOTION_WORLD) --seed 2
	test -f $(MOTION_REAL)/dataset.json || $(PY) -m stream_avatar data prompts --copies 4 \
		--out $(MOTION_REAL) --seed 0

# Trained with the level normaliser's peak tracker at 4 dB/s and attack 0.3, then run at 8 dB/s and 0.25
# (inference settings in the model's config; see models/MODEL_CARD.md).
train-motion: train-data
	$(PY) -m stream_avatar train motion --data $(MOTION_DATA) $(MOTION_VOICES) $(MOTION_WORLD) $(MOTION_REAL) \
		--out models/motion --seed 0
	$(PY) -c "import json, pathlib; p = pathlib.Path('models/motion/config.json'); d = json.loads(p.read_text()); \
		d['model'].update(peak_decay_db_per_s=8.0, peak_attack=0.25); \
		p.write_text(json.dumps(d, indent=2, sort_keys=True) + '\n')"

eval-motion: install
	$(PY) -m stream_avatar eval motion --data $(MOTION_DATA) $(MOTION_VOICES) $(MOTION_WORLD) --out benchmarks/results

# The shipped emotion model: emotional speech with voice quality and pitch range from every
# synthesizer (EMOTION_DATA, ~15 min to make) plus the recorded prompts as real neutral speech.
# Resumable like train-motion (models/emotion/checkpoint).
EMOTION_DATA ?= data/emotion-v2
emotion-data: install
	test -f $(EMOTION_DATA)/dataset.json || $(PY) -m stream_avatar data synth --hours 3 \
		--languages en,hi,es,de --synthesizers espeak,festival,flite --voice-quality \
		--out $(EMOTION_DATA) --seed 10

train-emotion: train-data emotion-data
	$(PY) -m stream_avatar train emotion --data $(EMOTION_DATA) $(MOTION_REAL) --out models/emotion --seed 0 \
		--fitter-response models/emotion/fitter_response.safetensors

eval-emotion: install emotion-data
	$(PY) -m stream_avatar eval emotion --data $(EMOTION_DATA) --out benchmarks/results
	$(PY) benchmarks/bench_expression.py
	$(PY) benchmarks/bench_reference.py

clean:
	rm -rf $(VENV) $(PIPECAT_VENV) build *.egg-info
