from dlscale.analysis import analysis_files


rule aggregate:
    input:
        existing_or_all_cells,
    output:
        cells=report(
            f"{paths.tables_dir(DATASET)}/cells.csv",
            caption="../report/tables.rst",
            category="Tables",
        ),
        missing=f"{paths.tables_dir(DATASET)}/missing_cells.csv",
        tables=table_files(),
        models=report(
            analysis_files(
                DATASET, config["backends"], config["scaling_modes"], "models"
            ),
            caption="../report/scaling_model.rst",
            category="Scaling model",
        ),
        cost=report(
            analysis_files(
                DATASET, config["backends"], config["scaling_modes"], "cost"
            ),
            caption="../report/cost.rst",
            category="Cost",
        ),
        plan=report(
            analysis_files(
                DATASET, config["backends"], config["scaling_modes"], "plan"
            ),
            caption="../report/plan_vs_actual.rst",
            category="Plan",
        ),
    log:
        f"results/logs/aggregate/{DATASET}.log",
    conda:
        "../../envs/driver.yaml"
    resources:
        **SMALL_JOB_RESOURCES,
    params:
        **grid_params(),
        allow_partial=config["aggregate"]["allow_partial"],
        reference_dir=PUBLISHED_DIR,
    script:
        "../scripts/aggregate.py"


rule plot:
    input:
        cells=rules.aggregate.output.cells,
    output:
        **{
            name: report(
                f"{paths.figures_dir(DATASET)}/{name}.png",
                caption=f"../report/{name}.rst",
                category="Figures",
            )
            for name in paths.FIGURES
        },
    log:
        f"results/logs/plot/{DATASET}.log",
    conda:
        "../../envs/driver.yaml"
    resources:
        **SMALL_JOB_RESOURCES,
    params:
        **grid_params(),
        reference_dir=PUBLISHED_DIR,
    script:
        "../scripts/plot.py"
