# One rule per backend. The command line comes from dlscale.cell_command (with the config's
# training and Spark settings written into it, not in params: a changed setting must not rerun a
# completed cell), the Slurm request from dlscale.resources (CELL below).


rule train_cell:
    # BigDL on a transient Spark standalone cluster: the cell claims and confines itself to
    # {wildcards.cores} CPUs, and writes metrics.json only when everything succeeded.
    input:
        unpack(cell_inputs("bigdl")),
    output:
        "results/cells/{dataset}/bigdl/{scaling}/n{size}/c{cores}/r{rep}/metrics.json",
    log:
        "results/logs/cells/{dataset}/bigdl/{scaling}/n{size}/c{cores}/r{rep}.log",
    conda:
        "../../envs/trainer.yaml"
    threads: lambda wc: int(wc.cores)
    resources:
        # Slurm: one node, one task of `cores` CPUs (the jobstep runs it in srun -n1); a cell
        # of more cores than slurm.cores_per_node gets `nodes` nodes, one task and one Spark
        # worker per node, and `mpi` keeps the jobstep from wrapping it in srun -n1 (the cell
        # starts the other nodes' workers with srun). nodes, tasks and mpi are unset on one node.
        cpus_per_task=CELL.cpus_per_task,
        nodes=CELL.nodes,
        tasks=CELL.tasks,
        mpi=CELL.mpi,
        # One timed_cell is allowed at a time (the local profile, slurm/allocation.sbatch):
        # cells run one after the other unless measurement.exclusive is false.
        timed_cell=CELL.timed_cell,
        mem_mb=CELL.bigdl_mem_mb,
        runtime=CELL.bigdl_runtime,
        slurm_extra=CELL.slurm_extra,
    shell:
        shell_template(
            "bigdl",
            interpreter(config, "bigdl", workflow.basedir),
            config["training"],
            config["spark"],
            config["slurm"]["cores_per_node"],
        )


rule train_cell_torch:
    # The PyTorch peer: the same model, data, batch, optimizer and CPU confinement, no Spark.
    # One node: a PyTorch cell does not span nodes (more cores than a node has: oversubscribed).
    input:
        unpack(cell_inputs("torch")),
    output:
        "results/cells/{dataset}/torch/{scaling}/n{size}/c{cores}/r{rep}/metrics.json",
    log:
        "results/logs/cells/{dataset}/torch/{scaling}/n{size}/c{cores}/r{rep}.log",
    conda:
        "../../envs/torch.yaml"
    threads: lambda wc: int(wc.cores)
    resources:
        cpus_per_task=CELL.cpus_per_task,
        timed_cell=CELL.timed_cell,
        mem_mb=CELL.torch_mem_mb,
        runtime=CELL.torch_runtime,
        slurm_extra=CELL.slurm_extra,
    shell:
        shell_template(
            "torch", interpreter(config, "torch", workflow.basedir), config["training"]
        )
