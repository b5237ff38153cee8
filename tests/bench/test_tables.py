from vitq.bench.tables import table1, table_compare, table_mp, table_search


def _row(method, bits, top1, **kw):
    return {"model": "m", "method": method, "w_bits": bits, "a_bits": bits, "mixed_precision": False, "top1": top1,
            "top1_float": 0.9, "size_mb": bits / 10, "calib_seconds": 1.0, "num_calib": 32, "num_test": 100,
            "command": "c", **kw}


def test_variants_stay_out_of_table1_and_are_labelled_in_the_comparison():
    rows = [_row("float", 32, 0.9, num_calib=0), _row("liu2021", 4, 0.80), _row("liu2021", 4, 0.85, post_softmax="two_region"),
            _row("mptq", 4, 0.82, smoothing="sqb", post_gelu="optm"), _row("ptq4vit", 4, 0.83, post_softmax="ptq4vit"),
            _row("liu2021", 4, 0.70, search="reference")]
    t1 = table1(rows, "m")
    assert t1.count("| Liu et al. (ours) | 4 | 4 |") == 1 and "| 80.00 |" in t1
    tc = table_compare(rows, "m")
    assert "| Liu et al. (ours) | 80.00 / 1 |" in tc
    assert "| mptq | 82.00 / 1 |" in tc and "| ptq4vit | 83.00 / 1 |" in tc
    assert "two_region" not in tc and "Made by one command" in tc  # variants go to their own table
    tv = table_compare(rows, "m", variants=True)
    assert "| Liu et al. (ours) + two_region softmax quantizer | 85.00 / 1 |" in tv and "| mptq |" not in tv
    assert "70.00" not in tc + tv  # reference-search reruns are not a method of their own


def test_comparison_names_the_commands_of_its_rows():
    rows = [_row("liu2021", 4, 0.80, command="vitq bench --peers"), _row("ptq4vit", 4, 0.83, command="vitq bench --peers"),
            _row("mptq-sqb", 4, 0.81, smoothing="sqb", command="vitq bench --methods mptq-sqb")]
    tc = table_compare(rows, "m")
    assert "Made by one command" in tc and "    vitq bench --peers" in tc and "mptq-sqb" not in tc
    rows.append(_row("repq-vit", 6, 0.85, command="vitq bench --bits 6"))
    tc = table_compare(rows, "m")  # another command's rows: a table of their own, after the larger one
    assert tc.count("Made by one command") == 2 and tc.index("--peers") < tc.index("--bits 6")
    assert "| repq-vit | 85.00 / 1 |" in tc.split("--bits 6")[1]
    assert "| mptq-sqb | 81.00 / 1 |" in table_compare(rows, "m", variants=True)


def test_mixed_precision_rows_meet_the_uniform_row_of_the_same_size():
    rows = [_row("liu2021", 6, 0.88), _row("liu2021", 6, 0.89, mixed_precision=True, mp_method="hessian", budget_mb=0.6,
                                            search_seconds=2.0)]
    t = table_mp(rows, "m")
    assert "| hessian | liu2021 | 0.6000 | 0.6000 | 89.00 | 88.00 | 2.0 |" in t


def test_fully_quantized_mp_rows_meet_the_fully_quantized_uniform_row():
    rows = [_row("liu2021", 5, 0.88), _row("liu2021", 5, 0.87, fully_quantized=True),
            _row("liu2021", 5, 0.86, mixed_precision=True, mp_method="hessian", budget_mb=0.5, fully_quantized=True,
                 search_seconds=1.0)]
    assert "| hessian | liu2021, fully quantized | 0.5000 | 0.5000 | 86.00 | 87.00 | 1.0 |" in table_mp(rows, "m")


def test_reference_rows_meet_the_fast_row_of_the_same_setting():
    rows = [_row("liu2021", 8, 0.90, search="fast", agreement=0.99), _row("liu2021", 8, 0.91, search="reference"),
            _row("liu2021", 6, 0.85, search="fast"), _row("liu2021", 6, 0.80, search="fast", post_softmax="log2"),
            _row("liu2021", 6, 0.86, search="reference")]
    t = table_search(rows, "m")
    assert "| Liu et al. (ours) | W8A8 | 32 / 100 | 90.00 | 91.00 | -1.00 | 99.00 / - |" in t
    assert "| Liu et al. (ours) | W6A6 | 32 / 100 | 85.00 | 86.00 | -1.00 |" in t  # not the log2-softmax variant
    assert "no reference-search rows" in table_search(rows[:1], "m")
