rule download:
    output:
        expand("resources/{{dataset}}/raw/{file}", file=IDX_FILES),
    log:
        "results/logs/download/{dataset}.log",
    conda:
        "../../envs/driver.yaml"
    resources:
        **SMALL_JOB_RESOURCES,
    params:
        dataset=lambda wc: wc.dataset,
        offline_dir=config["dataset"].get("dir"),
        mirrors=config["dataset"].get("mirrors"),
        # a dataset of your own: the checksums its files are checked by (dlscale.custom_dataset)
        sha256=config["dataset"].get("sha256"),
    script:
        "../scripts/download.py"


rule partition_subset:
    input:
        rules.download.output,
    output:
        directory("resources/{dataset}/subsets/n{size}"),
    log:
        "results/logs/partition/{dataset}/n{size}.log",
    conda:
        "../../envs/driver.yaml"
    resources:
        **SMALL_JOB_RESOURCES,
    params:
        dataset=lambda wc: wc.dataset,
        size=lambda wc: int(wc.size),
        split="train",
        seed=config["partition"]["seed"],
        n_files=config["partition"]["files"],
        test_size=None,
        # Folders written before the arrays existed are remade (rerun-triggers: params).
        arrays=paths.SUBSET_ARRAYS,
    script:
        "../scripts/partition.py"


rule partition_test:
    input:
        rules.download.output,
    output:
        directory("resources/{dataset}/test"),
    log:
        "results/logs/partition/{dataset}/test.log",
    conda:
        "../../envs/driver.yaml"
    resources:
        **SMALL_JOB_RESOURCES,
    params:
        dataset=lambda wc: wc.dataset,
        size=None,
        split="test",
        seed=config["partition"]["seed"],
        n_files=config["partition"]["files"],
        test_size=config["training"].get("test_size"),
        # Folders written before the arrays existed are remade (rerun-triggers: params).
        arrays=paths.SUBSET_ARRAYS,
    script:
        "../scripts/partition.py"
