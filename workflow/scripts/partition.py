"""Snakemake script of the partition rule: write one training subset or the test split, as
Parquet parts and NumPy arrays (dlscale.partition).

params: dataset, split ("train" | "test"), size (records, for "train"; None for "test"),
seed, n_files, test_size (records of the test split, or None for all of it).
input: the raw IDX files (all in one folder). output: the subset/test folder. log: one file.
"""

import logging

from dlscale.partition import partition_subset, partition_test
from dlscale.rule_script import one_folder, run_logged

log = logging.getLogger("dlscale.partition")


def main(smk) -> None:
    params = smk.params
    raw_dir, out_dir = one_folder(smk.input, "partition inputs"), smk.output[0]
    if params.split == "train":
        manifest = partition_subset(
            raw_dir, params.dataset, int(params.size), int(params.seed), int(params.n_files), out_dir
        )
    elif params.split == "test":
        test_size = getattr(params, "test_size", None)
        manifest = partition_test(
            raw_dir,
            params.dataset,
            out_dir,
            int(params.n_files),
            test_size=None if test_size is None else int(test_size),
            seed=int(params.seed),
        )
    else:
        raise ValueError(f"params.split must be 'train' or 'test', got {params.split!r}")
    log.info("wrote %d records in %d files to %s", manifest["records"], manifest["n_files"], out_dir)


if __name__ == "__main__":
    run_logged(main, snakemake, "partition")  # noqa: F821 -- injected by Snakemake
