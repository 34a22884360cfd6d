# dlscale: a BigDL LSTM scaling study on transient Spark standalone clusters (see README.md).
#   data:      download -> partition_subset / partition_test
#   cells:     train_cell (BigDL) / train_cell_torch, one per (scaling, size, cores, repetition)
#   aggregate: aggregate -> plot


# The defaults live beside this file (so `-d <workdir>` runs find them); --configfile merges over.
configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/cells.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    default_target: True
    input:
        table_files(),
        figure_files(),
