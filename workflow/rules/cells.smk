rule train_cell:
    input:
        # Nothing once metrics.json exists: a completed cell is rerun only when asked.
        unpack(cell_inputs()),
    output:
        "results/cells/{dataset}/{backend}/{scaling}/n{size}/c{cores}/r{rep}/metrics.json",
    log:
        "results/logs/cells/{dataset}/{backend}/{scaling}/n{size}/c{cores}/r{rep}.log",
    wildcard_constraints:
        backend="bigdl",
        scaling="strong|weak",
        size=r"\d+",
        cores=single_node_cores(),
        rep=r"\d+",
    conda:
        "../../envs/trainer.yaml"
    threads: lambda wc: int(wc.cores)
    resources:
        # Slurm: one task with `cores` CPUs on one node (the jobstep plugin wraps it in srun -n1).
        cpus_per_task=cell_cpus_per_node,
        # One timed_cell is allowed at a time (the local profile, slurm/allocation.sbatch):
        # cells run one after the other unless measurement.exclusive is false.
        timed_cell=TIMED_CELL,
        mem_mb=cell_mem_mb,
        runtime=cell_runtime,
        slurm_extra=CELL_SLURM_EXTRA,
    params:
        python=trainer_python(),
        training=config["training"],
        spark=config["spark"],
        cores_per_node=config["slurm"]["cores_per_node"],
        train_dir=lambda wc: paths.subset_dir(wc.dataset, int(wc.size)),
        test_dir=lambda wc: paths.test_dir(wc.dataset),
    shell:
        # The cell claims and confines itself to {wildcards.cores} CPUs, runs a transient Spark
        # standalone cluster and writes metrics.json only when everything succeeded. `exec`:
        # Snakemake is its parent, so --exit-with-parent stops it (and its cluster) when a
        # killed Snakemake leaves it orphaned.
        "exec {params.python} -m dlscale.cell --exit-with-parent"
        " --dataset {wildcards.dataset} --scaling {wildcards.scaling}"
        " --size {wildcards.size} --cores {wildcards.cores} --repetition {wildcards.rep}"
        " --train-dir {params.train_dir} --test-dir {params.test_dir} --out {output}"
        " --epochs {params.training[epochs]} --batch-size {params.training[batch_size]}"
        " --optimizer {params.training[optimizer]}"
        " --learning-rate {params.training[learning_rate]} --seed {params.training[seed]}"
        " --executor-memory {params.spark[executor_memory]}"
        " --driver-memory {params.spark[driver_memory]}"
        " --worker-memory {params.spark[worker_memory]}"
        " --cores-per-node {params.cores_per_node}"
        " > {log} 2>&1"


# A cell with more cores than a node has spans nodes: one Spark worker per node, started by the
# cell with srun. `mpi` keeps the jobstep plugin from wrapping the cell itself in `srun -n1`
# (which would confine it to one task on the first node).
use rule train_cell as train_cell_multinode with:
    wildcard_constraints:
        backend="bigdl",
        scaling="strong|weak",
        size=r"\d+",
        cores=multinode_cores(),
        rep=r"\d+",
    resources:
        nodes=cell_nodes,
        tasks=cell_nodes,
        cpus_per_task=cell_cpus_per_node,
        mpi="srun",
        timed_cell=TIMED_CELL,
        mem_mb=cell_mem_mb,
        runtime=cell_runtime,
        slurm_extra=CELL_SLURM_EXTRA,


rule train_cell_torch:
    # The PyTorch peer: the same model, data, batch, optimizer and CPU confinement, no Spark.
    input:
        unpack(cell_inputs("torch")),
    output:
        "results/cells/{dataset}/torch/{scaling}/n{size}/c{cores}/r{rep}/metrics.json",
    log:
        "results/logs/cells/{dataset}/torch/{scaling}/n{size}/c{cores}/r{rep}.log",
    wildcard_constraints:
        scaling="strong|weak",
        size=r"\d+",
        cores=r"\d+",
        rep=r"\d+",
    conda:
        "../../envs/torch.yaml"
    threads: lambda wc: int(wc.cores)
    resources:
        # One node: a PyTorch cell does not span nodes (more cores than a node has: oversubscribed).
        cpus_per_task=cell_cpus_per_node,
        timed_cell=TIMED_CELL,
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=cell_runtime,
        slurm_extra=CELL_SLURM_EXTRA,
    params:
        python=torch_python(),
        training=config["training"],
        train_dir=lambda wc: paths.subset_dir(wc.dataset, int(wc.size)),
        test_dir=lambda wc: paths.test_dir(wc.dataset),
    shell:
        # `exec`: Snakemake is its parent, so --exit-with-parent stops it when a killed Snakemake
        # leaves it orphaned (as train_cell).
        "exec {params.python} -m dlscale.torch_trainer --exit-with-parent"
        " --dataset {wildcards.dataset} --scaling {wildcards.scaling}"
        " --size {wildcards.size} --cores {wildcards.cores} --repetition {wildcards.rep}"
        " --train-dir {params.train_dir} --test-dir {params.test_dir} --out {output}"
        " --epochs {params.training[epochs]} --batch-size {params.training[batch_size]}"
        " --optimizer {params.training[optimizer]}"
        " --learning-rate {params.training[learning_rate]} --seed {params.training[seed]}"
        " > {log} 2>&1"
