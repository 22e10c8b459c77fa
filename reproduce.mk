# reproduce.mk — the file-based DAG of `make reproduce` (included from the Makefile).
#
#   results/<id>/summary.json    <- compute step  (python -m analysis.experiments.<module> compute)
#   results/figures/.<id>.plotted <- plot step    (writes results/figures/<id>_*.png, then the stamp)
#   REPORT.md                     <- every summary and every figure (python -m analysis.report)
#
# Profiles: default (fast, scaled down: the whole pipeline < 15 min on 2 cores) and FULL=1 (paper
# scale). The profile is part of every summary's config hash, and results/.profile records the last
# one used: switching profiles reruns every compute step. Each run is keyed by the hash of its own
# config (sizes, seeds, steps, code version), so a run that is identical in both profiles is computed
# once and shared, and runs that differ have different names and never overwrite each other.
#
# Rerunning with nothing changed does nothing (make sees every file up to date). Every result and
# figure is written atomically (temp file + rename) and a sweep writes each run as it finishes, so
# killing make midway and rerunning recomputes only unfinished runs and never leaves a half-written
# file. Parallelism inside a sweep: JOBS=n (default: all cores), EXECUTOR=serial|process|dask,
# SCHEDULER=tcp://host:port for dask.
#
# Targets: reproduce (= REPORT.md), repro-results, repro-figures, repro-<id> (one experiment),
# repro-clean-results. Standalone use: make -f reproduce.mk reproduce (PY, VENV default as in the Makefile).

VENV ?= .venv
PY ?= $(VENV)/bin/python
RESULTS ?= results

REPRO_PROFILE := $(if $(filter 1 true yes,$(FULL)),full,default)

# id:module, in the order the report lists them. Only experiments whose module exists take part, so
# the pipeline works while experiments are still being added (the report lists the others as missing).
REPRO_ALL := e1:e1_toy e2:e2_two_stages e3:e3_agreement e4:e4_copy e5:e5_phase e6:e6_multihead \
             e7:e7_reduced_vs_sim
REPRO_EXPS := $(foreach e,$(REPRO_ALL),$(if $(wildcard analysis/experiments/$(word 2,$(subst :, ,$(e))).py),$(e)))
REPRO_IDS := $(foreach e,$(REPRO_EXPS),$(word 1,$(subst :, ,$(e))))

# Code every experiment depends on. A change here reruns the compute steps, which recompute only
# runs whose config changed (bump an experiment's CODE_VERSION to force recomputation).
REPRO_COMMON := analysis/experiments/common.py analysis/experiments/__init__.py

# Parallelism is across runs (one process per core), so each process uses one BLAS thread unless
# the caller says otherwise; oversubscribed BLAS threads slow the sweeps down.
REPRO_ENV := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-1} \
             MKL_NUM_THREADS=$${MKL_NUM_THREADS:-1}

REPRO_SUMMARIES := $(foreach i,$(REPRO_IDS),$(RESULTS)/$(i)/summary.json)
REPRO_PLOTTED := $(foreach i,$(REPRO_IDS),$(RESULTS)/figures/.$(i).plotted)

.PHONY: reproduce repro repro-results repro-figures repro-clean-results FORCE-PROFILE $(addprefix repro-,$(REPRO_IDS))

reproduce: $(VENV)/.installed REPORT.md

repro: REPORT.md

repro-results: $(REPRO_SUMMARIES)
repro-figures: $(REPRO_PLOTTED)

# Rewritten only when the profile changes, so its timestamp marks the last profile switch.
$(RESULTS)/.profile: FORCE-PROFILE
	@mkdir -p $(RESULTS)
	@echo $(REPRO_PROFILE) | cmp -s - $@ || { echo $(REPRO_PROFILE) > $@; echo "profile: $(REPRO_PROFILE)"; }

define REPRO_RULES
$(RESULTS)/$(1)/summary.json: analysis/experiments/$(2).py $(REPRO_COMMON) $(RESULTS)/.profile | $(VENV)/.installed
	$$(REPRO_ENV) $(PY) -m analysis.experiments.$(2) compute --profile $(REPRO_PROFILE) --results $(RESULTS)
	@touch $$@

$(RESULTS)/figures/.$(1).plotted: $(RESULTS)/$(1)/summary.json analysis/plotting.py analysis/experiments/$(2).py | $(VENV)/.installed
	$$(REPRO_ENV) $(PY) -m analysis.experiments.$(2) plot --results $(RESULTS)
	@mkdir -p $(RESULTS)/figures && touch $$@

repro-$(1): $(RESULTS)/figures/.$(1).plotted
endef
$(foreach e,$(REPRO_EXPS),$(eval $(call REPRO_RULES,$(word 1,$(subst :, ,$(e))),$(word 2,$(subst :, ,$(e))))))

# E3 on real text (SPEC §8), when the user supplies files: make reproduce E3_TEXT=labels.tsv and/or
# E3_PARALLEL_SOURCE=src.txt E3_PARALLEL_TARGET=tgt.txt (command-line variables reach the compute
# step's environment). results/.e3-data records the choice, so adding, changing or dropping a file
# reruns E3; the runs on the synthetic tasks are reused.
E3_DATA := $(strip $(E3_TEXT) $(E3_PARALLEL_SOURCE) $(E3_PARALLEL_TARGET))
$(RESULTS)/.e3-data: FORCE-PROFILE
	@mkdir -p $(RESULTS)
	@echo '$(E3_DATA)' | cmp -s - $@ || echo '$(E3_DATA)' > $@
ifneq ($(filter e3,$(REPRO_IDS)),)
$(RESULTS)/e3/summary.json: $(RESULTS)/.e3-data $(E3_DATA)
endif

REPORT.md: $(REPRO_SUMMARIES) $(REPRO_PLOTTED) analysis/report.py | $(VENV)/.installed
	$(PY) -m analysis.report --results $(RESULTS) --out $@

# A finished result is never deleted by make, even if make is interrupted while a later step runs;
# the Python side guarantees it is complete (atomic writes).
.PRECIOUS: $(RESULTS)/%/summary.json $(RESULTS)/figures/.%.plotted $(RESULTS)/.profile $(RESULTS)/.e3-data

repro-clean-results: ## delete every result, figure and REPORT.md (forces a full recompute)
	rm -rf $(RESULTS) REPORT.md
