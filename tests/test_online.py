"""The in-memory online model: a pre-trained model meeting a class it never learnt."""

import numpy as np
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron

from oamlm_dist.descriptors import SoapSettings
from oamlm_dist.optimize.online import OnlineModel
from oamlm_dist.structures import rattle

CU = [1, 5, 9]


def cluster(copper: list[int], seed: int):
    atoms = Icosahedron("Au", 2)
    atoms.center()
    for index in copper:
        atoms[index].symbol = "Cu"
    atoms = rattle(atoms, 0.15, seed=seed)
    atoms.calc = EMT()
    atoms.get_forces()
    return atoms


def test_a_class_the_pretrained_model_lacks_is_learnt_from_the_fine_frames():
    soap = SoapSettings.parse("r_cut=5,n_max=4,l_max=4")
    gold = OnlineModel.cold_start(["Au", "Cu"], scheme="element", soap=soap)
    gold.add([cluster([], seed) for seed in range(3)])
    model = OnlineModel(gold.spec, gold.settings, gold.model, dict(gold.equations))
    references = model.model.classes["Au"].refs.Q.copy()
    assert sorted(model.model.classes) == ["Au"]

    alloys = [cluster(CU, seed) for seed in (10, 11)]
    model.add(alloys)

    assert sorted(model.model.classes) == ["Au", "Cu"]
    # The pre-trained class learnt incrementally: same references, new weights.
    np.testing.assert_array_equal(model.model.classes["Au"].refs.Q, references)
    assert not np.array_equal(model.model.classes["Au"].emlm.W, gold.model.classes["Au"].emlm.W)
    # The new class (K = all its rows) reproduces the EMT forces it learnt.
    for alloy in alloys:
        predicted = model.predict(alloy)["forces"][CU]
        fine = alloy.get_forces()[CU]
        np.testing.assert_allclose(np.linalg.norm(predicted, axis=1),
                                   np.linalg.norm(fine, axis=1), rtol=0.02)
        cosine = np.sum(predicted * fine, axis=1) / np.linalg.norm(predicted, axis=1) \
            / np.linalg.norm(fine, axis=1)
        assert np.degrees(np.arccos(np.clip(cosine, -1, 1))).max() < 20
