# FLYP and its baselines, from data to results/table.csv. Parameters: params.yaml (one source).
#   snakemake --cores all results/table.csv
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/table.csv",
    default_target: True


onstart:
    lock_out_dvc()


onsuccess:
    record_in_dvc()
