import warnings

import pytest
import torch

from distillguard.distill.config import DistillConfig, StudentConfig, TeacherConfig
from distillguard.distill.modelio import load_model, param_count
from distillguard.distill.student import StudentConfigError, build_student, select_layers


def test_select_layers():
    assert select_layers(30, "every_other", None) == list(range(0, 30, 2))
    assert len(select_layers(30, "every_other", None)) == 15
    assert select_layers(30, None, 4) == [0, 10, 19, 29]
    assert select_layers(6, [5, 1], None) == [1, 5]
    with pytest.raises(StudentConfigError, match="out of range"):
        select_layers(4, [0, 4], None)
    with pytest.raises(StudentConfigError, match="teacher has 4 layers"):
        select_layers(4, None, 9)


def test_layers_copied_exactly(tmp_path, tiny_teacher):
    cfg = DistillConfig(workdir=tmp_path, teacher=TeacherConfig(model_path=tiny_teacher), student=StudentConfig(layers=[0, 3]))
    s = build_student(cfg)
    teacher, _ = load_model(tiny_teacher)
    student, tok = load_model(s.output)
    assert student.config.num_hidden_layers == 2 and s.layers == [0, 3]
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for name, value in s_sd.items():
        src = name.replace("layers.1.", "layers.3.")
        assert torch.equal(value, t_sd[src]), name
    per_layer = sum(v.numel() for k, v in t_sd.items() if ".layers.0." in k)
    assert param_count(teacher) - param_count(student) == 2 * per_layer
    assert s.student_params == param_count(student) < s.teacher_params
    assert tok.get_vocab() == load_model(tiny_teacher)[1].get_vocab()


def test_bigger_student_warns(tmp_path, tiny_teacher):
    cfg = DistillConfig(
        workdir=tmp_path, teacher=TeacherConfig(model_path=tiny_teacher),
        student=StudentConfig(from_config={"num_hidden_layers": 6}),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = build_student(cfg)
    assert any("not smaller than its teacher" in str(w.message) for w in caught)
    assert s.student_params > s.teacher_params


def test_from_config_bad_field(tmp_path, tiny_teacher):
    cfg = DistillConfig(workdir=tmp_path, teacher=TeacherConfig(model_path=tiny_teacher),
                        student=StudentConfig(from_config={"num_layerz": 2}))
    with pytest.raises(StudentConfigError, match="no field 'num_layerz'"):
        build_student(cfg)
