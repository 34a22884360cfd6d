rule train_cell:
    input:
        train=lambda wc: paths.subset_dir(wc.dataset, int(wc.size)),
        test=lambda wc: paths.test_dir(wc.dataset),
        # Every subset is prepared before any cell starts, so no untimed job shares a
        # timed cell's CPUs.
        prepared=all_subsets(),
    output:
        "results/cells/{dataset}/{backend}/{scaling}/n{size}/c{cores}/r{rep}/metrics.json",
    log:
        "results/logs/cells/{dataset}/{backend}/{scaling}/n{size}/c{cores}/r{rep}.log",
    wildcard_constraints:
        backend="bigdl",
        scaling="strong|weak",
        size=r"\d+",
        cores=r"\d+",
        rep=r"\d+",
    conda:
        "../../envs/trainer.yaml"
    threads: lambda wc: int(wc.cores)
    params:
        python=trainer_python(),
        training=config["training"],
        spark=config["spark"],
    shell:
        # The cell claims and confines itself to {wildcards.cores} CPUs, runs a transient Spark
        # standalone cluster and writes metrics.json only when everything succeeded.
        "{params.python} -m dlscale.cell"
        " --dataset {wildcards.dataset} --scaling {wildcards.scaling}"
        " --size {wildcards.size} --cores {wildcards.cores} --repetition {wildcards.rep}"
        " --train-dir {input.train} --test-dir {input.test} --out {output}"
        " --epochs {params.training[epochs]} --batch-size {params.training[batch_size]}"
        " --optimizer {params.training[optimizer]}"
        " --learning-rate {params.training[learning_rate]} --seed {params.training[seed]}"
        " --executor-memory {params.spark[executor_memory]}"
        " --driver-memory {params.spark[driver_memory]}"
        " --worker-memory {params.spark[worker_memory]}"
        " > {log} 2>&1"
