"""Tensor inputs (``{"type": "tensor", "dtype": ..., "shape": [...]}``) through every request decoder: Open Inference
Protocol JSON and binary (bodies built by tritonclient), ``/predict`` records, MLflow's formats and the OpenAPI
document. The decoders are called directly: no model, no server, no Ray."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import tritonclient.http as httpclient

from runtime.serving import oip
from runtime.serving.openapi import build_openapi
from runtime.serving.protocol import RequestError, check_columns
from runtime.serving.scoring import decode_mlflow, decode_predict

IMAGE = {"type": "tensor", "dtype": "FP32", "shape": [1, 28, 28]}
SCHEMA = {"image": IMAGE, "x": {"type": "float", "nullable": False}}
RNG = np.random.default_rng(0)


def _images(n: int = 2) -> np.ndarray:
    return RNG.random((n, 1, 28, 28), dtype=np.float32)


def _error(fn, *args) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args)
    assert 400 <= info.value.status < 500
    return info.value


def _infer(inputs: list[dict], schema=SCHEMA, binary: bytes = b"") -> oip.InferRequest:
    head = json.dumps({"inputs": inputs}).encode()
    return oip.decode_infer(head + binary, str(len(head)) if binary else None, schema)


def _image_input(arr: np.ndarray, **changes) -> dict:
    return {"name": "image", "shape": list(arr.shape), "datatype": "FP32", "data": arr.ravel().tolist(), **changes}


def _x(n: int = 2) -> dict:
    return {"name": "x", "shape": [n], "datatype": "FP64", "data": [float(i) for i in range(n)]}


def _is_column(col, expected: np.ndarray, dtype=np.float32) -> None:
    """The decoded tensor column contract: the declared dtype's numpy type, [N, *shape], C-contiguous."""
    assert isinstance(col, np.ndarray) and col.dtype == dtype
    assert col.shape == expected.shape and col.flags.c_contiguous
    assert np.array_equal(col, expected)


# -- Open Inference Protocol: JSON ----------------------------------------------------------------------------------


def test_oip_json_flat_and_nested_data():
    arr = _images()
    for data in (arr.ravel().tolist(), arr.tolist(), arr.reshape(2, -1).tolist(), arr.reshape(-1, 28).tolist()):
        req = _infer([_image_input(arr, data=data), _x()])
        _is_column(req.columns["image"], arr)
        assert list(req.columns["x"]) == [0.0, 1.0]


def test_oip_json_float_tensor_takes_float_and_integer_datatypes():
    ints = RNG.integers(0, 255, (3, 1, 28, 28))
    for datatype in ("FP64", "FP16", "INT64", "UINT8"):
        req = _infer([_image_input(ints, datatype=datatype), _x(3)])
        _is_column(req.columns["image"], ints.astype(np.float32))


def test_oip_tensor_only_model_and_other_dtypes():
    schema = {"ids": {"type": "tensor", "dtype": "INT32", "shape": [4]},
              "mask": {"type": "tensor", "dtype": "BOOL", "shape": [2, 2]}}
    ids = [[1, 2, 3, 4], [5, 6, 7, 8.0]]
    mask = [[[True, False], [False, True]]] * 2
    req = _infer([{"name": "ids", "shape": [2, 4], "datatype": "INT32", "data": ids},
                  {"name": "mask", "shape": [2, 2, 2], "datatype": "BOOL", "data": mask}], schema)
    _is_column(req.columns["ids"], np.array(ids, np.int32), np.int32)
    _is_column(req.columns["mask"], np.array(mask), np.bool_)


@pytest.mark.parametrize("change, message", [
    ({"shape": [1, 28, 28]}, "input 'image': shape [1, 28, 28] does not match [N, 1, 28, 28]"),
    ({"shape": [2, 784]}, "input 'image': shape [2, 784] does not match [N, 1, 28, 28]"),
    ({"shape": [2, 1, 28, 27]}, "input 'image': shape [2, 1, 28, 27] does not match [N, 1, 28, 28]"),
    ({"shape": [2, True, 28, 28]}, "input 'image': shape [2, True, 28, 28] does not match [N, 1, 28, 28]"),
    ({"shape": [-1, 1, 28, 28]}, "input 'image': shape [-1, 1, 28, 28] does not match [N, 1, 28, 28]"),
    ({"shape": "2x1x28x28"}, "input 'image': shape '2x1x28x28' does not match [N, 1, 28, 28]"),
    ({"datatype": "BYTES"}, "input 'image': datatype 'BYTES' not accepted; use FP32"),
    ({"datatype": "BOOL"}, "input 'image': datatype 'BOOL' not accepted; use FP32"),
    ({"datatype": ["FP32"]}, "input 'image': datatype ['FP32'] not accepted; use FP32"),
    ({"shape": [3, 1, 28, 28]}, "input 'image': shape [3, 1, 28, 28] needs 2352 values, got 1568"),
    ({"data": [[0.0] * 784, [0.0] * 783]}, "input 'image': ragged nested lists; each row must have shape [1, 28, 28]"),
    ({"data": [0.0] * 784 + [[0.0]] * 784}, "input 'image': ragged nested lists"),
    ({"data": [0.0] * 1000 + ["x"] + [0.0] * 567}, "input 'image': expected a number at row 1, got 'x'"),
    ({"data": [0.0] * 5 + [None] + [0.0] * 1562}, "input 'image': expected a number at row 0, got None"),
    ({"data": [True] * 1568}, "input 'image': expected a number at row 0, got True"),
    ({"data": [0.0] * 800 + [float("nan")] + [0.0] * 767}, "input 'image': non-finite value nan at row 1"),
    ({"data": [float("-inf")] + [0.0] * 1567}, "input 'image': non-finite value -inf at row 0"),
    ({"data": [1e300] + [0.0] * 1567}, "input 'image': value 1e+300 is out of the FP32 range at row 0"),
    ({"data": [2 ** 70] + [0.0] * 1567}, "input 'image': integer 1180591620717411303424 at row 0 is out of the "
                                         "64-bit range"),
    ({"data": "abc"}, "input 'image': 'data' must be a list"),
])
def test_oip_json_tensor_errors_name_the_input(change, message):
    err = _error(_infer, [_image_input(_images(), **change), _x()])
    assert err.status == 400 and err.message.startswith(message), err.message


@pytest.mark.parametrize("dtype, data, message", [
    ("INT32", [1.5, 2, 3, 4], "input 't': expected an integer, got 1.5 at row 0"),
    ("INT32", [1, 2, 3, 2 ** 31], "input 't': value 2147483648 is out of the INT32 range at row 0"),
    ("INT64", [1, 2, 3, 2 ** 63], "input 't': value 9223372036854775808 is out of the INT64 range at row 0"),
    ("UINT64", [1, 2, 3, 2 ** 64], "input 't': integer 18446744073709551616 at row 0 is out of the 64-bit range"),
    ("UINT64", [1, 2, 3, -1], "input 't': value -1 is out of the UINT64 range at row 0"),
    ("UINT8", [1, 2, -1, 4], "input 't': value -1 is out of the UINT8 range at row 0"),
    ("UINT8", [1, 2, 3, 256.0], "input 't': value 256.0 is out of the UINT8 range at row 0"),
    ("INT8", [1, 2, 3, float("nan")], "input 't': expected an integer, got nan at row 0"),
    ("INT8", [1, 2, 3, "4"], "input 't': expected an integer at row 0, got '4'"),
    ("BOOL", [True, False, 1, True], "input 't': expected true/false at row 0, got 1"),
    ("FP16", [1.0, 2.0, 3.0, 70000.0], "input 't': value 70000.0 is out of the FP16 range at row 0"),
    ("FP16", [1, 2, 3, 70000], "input 't': value 70000 is out of the FP16 range at row 0"),
])
def test_oip_json_element_types_and_ranges(dtype, data, message):
    schema = {"t": {"type": "tensor", "dtype": dtype, "shape": [4]}}
    err = _error(_infer, [{"name": "t", "shape": [1, 4], "datatype": dtype, "data": data}], schema)
    assert err.message == message


def test_large_integers_stay_exact():
    schema = {"t": {"type": "tensor", "dtype": "UINT64", "shape": [3]}}
    data = [5, 2 ** 63 + 5, 2.0]  # numpy alone reads these as float64
    col = _infer([{"name": "t", "shape": [1, 3], "datatype": "UINT64", "data": data}], schema).columns["t"]
    _is_column(col, np.array([[5, 2 ** 63 + 5, 2]], np.uint64), np.uint64)


def test_oip_integer_tensors_take_only_their_datatype():
    schema = {"t": {"type": "tensor", "dtype": "INT32", "shape": [2]}}
    err = _error(_infer, [{"name": "t", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}], schema)
    assert err.message == "input 't': datatype 'INT64' not accepted; use INT32"


def test_oip_rows_must_agree_with_tabular_columns():
    err = _error(_infer, [_image_input(_images(2)), _x(3)])
    assert err.message == "inputs have different lengths: image=2, x=3"
    empty = _error(_infer, [_image_input(np.zeros((0, 1, 28, 28), np.float32)), _x(0)])
    assert empty.message == "empty input: send at least one row"


# -- Open Inference Protocol: binary tensors, as tritonclient sends them ------------------------------------------


def _triton_body(*inputs: httpclient.InferInput) -> tuple[bytes, str | None]:
    body, length = httpclient.InferenceServerClient.generate_request_body(list(inputs))
    return body, None if length is None else str(length)


def _triton_input(name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    inp = httpclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_bodies_decode(binary):
    arr = _images(2)
    x = np.array([1.5, 2.5])
    body, length = _triton_body(_triton_input("image", arr, "FP32", binary), _triton_input("x", x, "FP64", binary))
    assert (length is not None) == binary
    req = oip.decode_infer(body, length, SCHEMA)
    _is_column(req.columns["image"], arr)
    assert list(req.columns["x"]) == [1.5, 2.5]


@pytest.mark.parametrize("datatype, np_type", [("FP64", np.float64), ("FP16", np.float16), ("UINT8", np.uint8),
                                               ("INT16", np.int16)])
def test_binary_float_tensor_converts_other_datatypes(datatype, np_type):
    arr = (_images(3) * 100).astype(np_type)
    body, length = _triton_body(_triton_input("image", arr, datatype), _triton_input("x", np.zeros(3), "FP64"))
    _is_column(oip.decode_infer(body, length, SCHEMA).columns["image"], arr.astype(np.float32))


def test_binary_bf16_decodes_to_float32():
    schema = {"t": {"type": "tensor", "dtype": "BF16", "shape": [3]}}
    values = np.array([[1.5, -2.0, 0.15625]], np.float32)  # exact in bfloat16
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    req = _infer([{"name": "t", "shape": [1, 3], "datatype": "BF16", "parameters": {"binary_data_size": len(raw)}}],
                 schema, raw)
    _is_column(req.columns["t"], values)


def test_binary_tensor_errors_name_the_input():
    arr = _images(2)
    body, length = _triton_body(_triton_input("image", arr, "FP32"), _triton_input("x", np.zeros(2), "FP64"))
    head, raw = body[:int(length)], body[int(length):]
    last, last_length = _triton_body(_triton_input("x", np.zeros(2), "FP64"), _triton_input("image", arr, "FP32"))
    truncated = _error(oip.decode_infer, last[:-3], last_length, SCHEMA)
    assert truncated.message == "input 'image': binary_data_size 6272 does not fit the 6269 binary bytes left"
    head_json = json.loads(head)
    head_json["inputs"][0]["parameters"]["binary_data_size"] -= 4
    short = json.dumps(head_json).encode()
    err = _error(oip.decode_infer, short + raw, str(len(short)), SCHEMA)
    assert err.message == "input 'image': FP32 shape needs 6272 bytes, got 6268"
    nan = arr.copy()
    nan[1, 0, 3, 4] = np.nan
    body, length = _triton_body(_triton_input("image", nan, "FP32"), _triton_input("x", np.zeros(2), "FP64"))
    assert _error(oip.decode_infer, body, length, SCHEMA).message == "input 'image': non-finite value nan at row 1"
    flat = _triton_input("image", arr.reshape(2, 784), "FP32")
    body, length = _triton_body(flat, _triton_input("x", np.zeros(2), "FP64"))
    assert _error(oip.decode_infer, body, length, SCHEMA).message == \
        "input 'image': shape [2, 784] does not match [N, 1, 28, 28]"


def test_binary_column_is_the_body_without_a_copy_when_the_datatype_matches():
    arr = _images(2)
    body, length = _triton_body(_triton_input("image", arr, "FP32"), _triton_input("x", np.zeros(2), "FP64"))
    col = oip.decode_infer(body, length, SCHEMA).columns["image"]
    _is_column(col, arr)
    assert not col.flags.writeable  # a view of the request body: copy before writing to it


# -- metadata -------------------------------------------------------------------------------------------------------


def test_input_metadata_shapes():
    schema = {**SCHEMA, "mask": {"type": "tensor", "dtype": "BOOL", "shape": [4]}}
    assert oip.input_metadata(schema) == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]},
        {"name": "x", "datatype": "FP64", "shape": [-1]},
        {"name": "mask", "datatype": "BOOL", "shape": [-1, 4]},
    ]


# -- check_columns on per-row values (the JSON record protocols) ----------------------------------------------------


def test_check_columns_takes_rows_arrays_and_keeps_a_ready_array():
    arr = _images(3)
    strided = arr.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)
    for values in (arr.tolist(), list(arr), arr.astype(np.float64), strided):
        _is_column(check_columns({"image": values, "x": [1.0, 2.0, 3.0]}, SCHEMA)["image"], arr)
    assert check_columns({"image": arr, "x": [1.0, 2.0, 3.0]}, SCHEMA)["image"] is arr


@pytest.mark.parametrize("rows, message", [
    ([[[0.0] * 28] * 28], "input 'image': each row must have shape [1, 28, 28], got shape [28, 28]"),
    ([0.5], "input 'image': each row must have shape [1, 28, 28], got shape []"),
    ([[[[0.0] * 28] * 28], [[[0.0] * 28] * 27]], "input 'image': ragged nested lists; each row must have shape "
                                                 "[1, 28, 28]"),
    ([[[[0.0] * 28] * 27 + [[0.0] * 27 + ["1"]]]], "input 'image': expected a number at row 0, got '1'"),
    ([[[[0.0] * 28] * 28], [[[0.0] * 28] * 27 + [[0.0] * 27 + [{}]]]],
     "input 'image': expected a number at row 1, got {}"),
    ([[[[0.0] * 28] * 28], [[[float("inf")] * 28] * 28]], "input 'image': non-finite value inf at row 1"),
])
def test_check_columns_tensor_errors(rows, message):
    err = _error(check_columns, {"image": rows, "x": [0.0] * len(rows)}, SCHEMA)
    assert err.status == 400 and err.message == message


def test_tensor_inputs_never_take_the_tabular_checks():
    """A tensor-shaped value for a tabular column is refused by the tabular check, and a tabular list for a tensor
    by the tensor check."""
    assert "expected a number" in _error(check_columns, {"image": _images(1), "x": [[1.0]]}, SCHEMA).message
    assert "each row must have shape" in _error(check_columns, {"image": [1.0], "x": [1.0]}, SCHEMA).message


# -- /predict and MLflow scoring ------------------------------------------------------------------------------------


def _records(arr: np.ndarray) -> list[dict]:
    return [{"image": row.tolist(), "x": float(i)} for i, row in enumerate(arr)]


def test_predict_records_carry_tensors():
    arr = _images(3)
    for body in (_records(arr), {"records": _records(arr)}):
        cols = decode_predict(json.dumps(body).encode(), SCHEMA, ("customer_id",)).columns
        _is_column(cols["image"], arr)
        assert cols["x"] == [0.0, 1.0, 2.0]
    bad = [dict(r, image=r["image"][0]) for r in _records(arr)]
    err = _error(decode_predict, json.dumps(bad).encode(), SCHEMA, ("customer_id",))
    assert err.message == "input 'image': each row must have shape [1, 28, 28], got shape [28, 28]"


def test_mlflow_formats_carry_tensors():
    arr = _images(3)
    recs = _records(arr)
    bodies = [
        {"dataframe_split": {"columns": ["image", "x"], "data": [[r["image"], r["x"]] for r in recs]}},
        {"dataframe_records": recs},
        {"instances": recs},
        {"inputs": recs},
        {"inputs": {"image": arr.tolist(), "x": [0.0, 1.0, 2.0]}},  # MLflow's tensor form
    ]
    for body in bodies:
        cols = decode_mlflow(json.dumps(body).encode(), "application/json", SCHEMA)
        _is_column(cols["image"], arr)
        assert list(cols["x"]) == [0.0, 1.0, 2.0]
    only = {"image": IMAGE}
    _is_column(decode_mlflow(json.dumps({"inputs": {"image": arr.tolist()}}).encode(), None, only)["image"], arr)
    err = _error(decode_mlflow, json.dumps({"inputs": {"image": arr[:, 0].tolist(), "x": [0.0] * 3}}).encode(),
                 "application/json", SCHEMA)
    assert err.message == "input 'image': each row must have shape [1, 28, 28], got shape [28, 28]"
    err = _error(decode_mlflow, json.dumps({"inputs": {"image": arr.tolist(), "x": [0.0] * 2}}).encode(),
                 "application/json", SCHEMA)
    assert err.message == "inputs have different lengths: image=3, x=2"


def test_csv_is_refused_for_tensor_models():
    err = _error(decode_mlflow, b"x\n1.0\n", "text/csv", SCHEMA)
    assert err.status == 415
    assert err.message.startswith("tensor input(s) image need JSON: send application/json")


# -- OpenAPI --------------------------------------------------------------------------------------------------------


def test_openapi_request_schemas_describe_tensors():
    doc = build_openapi({"openapi": "3.1.0", "paths": {}}, [("mnist", SCHEMA, [0, 1])])
    schemas = doc["components"]["schemas"]
    image = schemas["mnist.Record"]["properties"]["image"]
    arr = _images(1)
    jsonschema.validate(arr[0].tolist(), image)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(arr[0, 0].tolist(), image)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([[["x"] * 28] * 28], image)
    tensor = schemas["mnist.Input.image"]
    jsonschema.validate(_image_input(arr), tensor)
    jsonschema.validate(_image_input(arr, data=arr.tolist()), tensor)
    assert "BYTES" not in tensor["properties"]["datatype"]["enum"]
    for bad in ({"shape": [1, 784]}, {"shape": [1, 1, 28, 27]}, {"datatype": "BYTES"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(_image_input(arr, **bad), tensor)
    scoring_inputs = next(s for s in schemas["mnist.Scoring"]["oneOf"] if "inputs" in s["properties"])
    jsonschema.validate({"inputs": {"image": arr.tolist(), "x": [0.0]}}, scoring_inputs)
    assert {"/predict/mnist", "/v2/models/mnist/infer", "/models/mnist/invocations"} <= set(doc["paths"])
