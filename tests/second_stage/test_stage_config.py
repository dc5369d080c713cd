"""SecondStageConfig: one schema for the Python call, tools/infer.py's flags and the Detectron2 keys."""
import argparse

import pytest

from crop_classifier.errors import ParameterError, UsageError
from crop_classifier.second_stage import (KNOBS, FusionSettings, SecondStageConfig, Selection, add_arguments,
                                          d2_error, flag_error)


def test_keywords_are_the_flag_names_and_land_in_their_groups():
    c = SecondStageConfig(fusion="rescore", class_map="vehicle=car,bus;*=*", min_box_size=48, nms_thresh=0.6,
                          crops_per_forward=8, context=0.2)
    assert c.fusion == FusionSettings(mode="rescore", nms_thresh=0.6)
    assert c.selection.class_map == (("vehicle", ("car", "bus")), ("*", ("*",)))
    assert c.selection.min_box_size == 48.0 and c.batching.crops_per_forward == 8 and c.crop.context == 0.2
    # the string, dict and pair forms of a class map are one value
    assert SecondStageConfig(class_map={"vehicle": ["car", "bus"], "*": "*"}).selection == \
        SecondStageConfig(class_map=[["vehicle", "car,bus"], ["*", "*"]]).selection == \
        Selection(class_map=c.selection.class_map)


def test_groups_and_keywords_combine_and_replace_keeps_the_rest():
    c = SecondStageConfig(selection=Selection(min_box_size=10), nms_thresh=0.3)
    d = c.replace(fusion="filter", max_box_size=200)
    assert (d.fusion.mode, d.fusion.nms_thresh) == ("filter", 0.3)
    assert (d.selection.min_box_size, d.selection.max_box_size) == (10.0, 200.0)
    assert c.fusion.mode == "replace"  # frozen: replace made a new one
    with pytest.raises(Exception):
        c.fusion = FusionSettings()


@pytest.mark.parametrize("kw, param", [
    (dict(min_box_size=-1), "min_box_size"), (dict(min_box_size=50, max_box_size=20), "max_box_size"),
    (dict(fusion="vote"), "fusion"), (dict(nms_thresh=1.5), "nms_thresh"), (dict(background_drop=-0.1),
                                                                             "background_drop"),
    (dict(crops_per_forward=0), "crops_per_forward"), (dict(crop_mode="circle"), "crop_mode"),
    (dict(class_map="vehicle"), "class_map"), (dict(min_size=3), "min_size"),
])
def test_bad_values_name_the_parameter_and_each_front_end_names_its_own(kw, param):
    with pytest.raises(ParameterError) as info:
        SecondStageConfig(**kw)
    e = info.value
    assert e.param == param and isinstance(e, UsageError)
    knob = {k.name: k for k in KNOBS}.get(param)
    if knob is not None:
        assert flag_error(e).startswith(knob.flag + ":")
        assert d2_error(e).startswith("MODEL.CROP_CLASSIFIER." + knob.d2_key + ":")


def test_command_line_is_built_from_the_table():
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([])
    assert SecondStageConfig.from_namespace(args) == SecondStageConfig()  # every flag's default is the config's
    args = p.parse_args(["--fusion", "rescore", "--class-map", "*=*", "--min-box-size", "32", "--reclassify", "car",
                         "person", "--no-calibrate-gates", "--crops-per-forward", "16"])
    c = SecondStageConfig.from_namespace(args)
    assert c == SecondStageConfig(fusion="rescore", class_map="*=*", min_box_size=32, reclassify=["car", "person"],
                                  calibrate_gates=False, crops_per_forward=16)
    # one flag per knob: a knob added to the table is a flag without another line
    flags = {a.dest for a in p._actions}
    assert {k.name for k in KNOBS} <= flags


def test_flags_are_json_ready_and_changed_flags_only_the_set_ones():
    c = SecondStageConfig(class_map="a=b", reclassify=["a"], nms_thresh=0.4)
    assert c.changed_flags() == {"class_map": [["a", ["b"]]], "reclassify": ["a"], "nms_thresh": 0.4}
    assert set(c.flags()) == {k.name for k in KNOBS}
    assert SecondStageConfig(**{k: v for k, v in c.flags().items()}) == c  # a round trip


def test_detectron2_keys_read_into_the_same_config():
    from crop_classifier.second_stage.config import d2_defaults

    node = d2_defaults()
    assert SecondStageConfig.from_d2(node) == SecondStageConfig()
    node.update(CLASS_MAP=[["vehicle", "car,bus"]], FUSION="rescore", MIN_BOX_SIZE=24.0, MAX_CROPS_PER_FORWARD=32.0)
    assert SecondStageConfig.from_d2(node) == SecondStageConfig(class_map="vehicle=car,bus", fusion="rescore",
                                                                min_box_size=24, crops_per_forward=32)
