# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""C loops for :mod:`driftline.schemas.columnar` (the compiled implementation).

The numpy implementation pays a fixed cost per numpy call, about 1 ms a batch,
so small batches went through fastavro at ~15 µs a row; these loops walk
each row once in C and cost well under a microsecond a field at any batch
size. Python (:mod:`~driftline.schemas.columnar`) only lays out the fields
(which kind, which output slot) and resolves schemas. The numpy
implementation stays the reference: tests/unit/test_columnar.py runs both
against each other and against fastavro.

Kind codes: 0 boolean, 1 int/long, 2 float, 3 double, 4 string, 5 bytes.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int8_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy

import numpy as np

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL

cdef enum:
    BOOLEAN = 0
    LONG = 1
    FLOAT = 2
    DOUBLE = 3
    STRING = 4
    BYTES = 5


cdef inline bint _varint(const unsigned char* d, int64_t* p, int64_t end, int64_t* out) noexcept nogil:
    """A zigzag varint at ``p[0]``; false when it runs past ``end`` or over 10 bytes."""
    cdef uint64_t v = 0
    cdef unsigned char b
    cdef int k
    for k in range(10):
        if p[0] >= end:
            return False
        b = d[p[0]]
        p[0] += 1
        v |= (<uint64_t>(b & 0x7F)) << (7 * k)
        if not (b & 0x80):
            out[0] = <int64_t>(v >> 1) ^ -<int64_t>(v & 1)
            return True
    return False


def read(bytes buf, const int64_t[::1] starts, const int64_t[::1] ends, const int8_t[::1] kinds,
         const int8_t[::1] null_branches, const int8_t[::1] keep, const int64_t[::1] slots,
         Py_ssize_t n_f64, Py_ssize_t n_i64, Py_ssize_t n_b8, Py_ssize_t n_str):
    """Decode the bodies ``buf[starts[i]:ends[i]]`` field by field.

    Returns float64, int64 and bool matrices (one row per field slot), a
    null matrix (one row per field), the string/bytes columns by slot (None
    for fields the reader drops) and the ``malformed`` mask. Null and bad
    rows hold NaN, 0, False or None, as in the numpy implementation.
    """
    cdef Py_ssize_t n = starts.shape[0], nf = kinds.shape[0], i, j, s
    cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(buf)
    f64_arr = np.full((n_f64, n), np.nan)
    i64_arr = np.zeros((n_i64, n), dtype=np.int64)
    b8_arr = np.zeros((n_b8, n), dtype=bool)
    null_arr = np.zeros((nf, n), dtype=bool)
    bad_arr = np.zeros(n, dtype=bool)
    str_off_arr = np.zeros((n_str, n), dtype=np.int64)
    str_len_arr = np.full((n_str, n), -1, dtype=np.int64)
    cdef double[:, ::1] f64 = f64_arr
    cdef int64_t[:, ::1] i64 = i64_arr
    cdef uint8_t[:, ::1] b8 = b8_arr.view(np.uint8)
    cdef uint8_t[:, ::1] nulls = null_arr.view(np.uint8)
    cdef uint8_t[::1] bad = bad_arr.view(np.uint8)
    cdef int64_t[:, ::1] str_off = str_off_arr
    cdef int64_t[:, ::1] str_len = str_len_arr
    cdef int64_t p, end, v = 0
    cdef int8_t kind
    cdef double dv = 0
    cdef float fv = 0
    cdef int64_t size = PyBytes_GET_SIZE(buf)
    if ends.shape[0] != n or slots.shape[0] != nf or null_branches.shape[0] != nf or keep.shape[0] != nf:
        raise ValueError("starts/ends and the per-field arrays must have matching lengths")
    for i in range(n):  # the loops below trust these bounds
        if not 0 <= starts[i] <= ends[i] <= size:
            raise ValueError(f"row {i}: [{starts[i]}, {ends[i]}) is not within the {size}-byte buffer")
    with nogil:
        for i in range(n):
            p = starts[i]
            end = ends[i]
            for j in range(nf):
                kind = kinds[j]
                s = slots[j]
                if null_branches[j] >= 0:
                    if not _varint(d, &p, end, &v) or v < 0 or v > 1:
                        bad[i] = 1
                        break
                    if v == null_branches[j]:
                        nulls[j, i] = 1
                        continue
                if kind == DOUBLE:
                    if end - p < 8:
                        bad[i] = 1
                        break
                    memcpy(&dv, d + p, 8)
                    f64[s, i] = dv
                    p += 8
                elif kind == FLOAT:
                    if end - p < 4:
                        bad[i] = 1
                        break
                    memcpy(&fv, d + p, 4)
                    f64[s, i] = fv
                    p += 4
                elif kind == LONG:
                    if not _varint(d, &p, end, &v):
                        bad[i] = 1
                        break
                    i64[s, i] = v
                elif kind == BOOLEAN:
                    if p >= end or d[p] > 1:
                        bad[i] = 1
                        break
                    b8[s, i] = d[p]
                    p += 1
                else:
                    if not _varint(d, &p, end, &v) or v < 0 or v > end - p:
                        bad[i] = 1
                        break
                    str_off[s, i] = p
                    str_len[s, i] = v
                    p += v
            if p != end:
                bad[i] = 1
    strs = []
    for j in range(nf):
        if kinds[j] == STRING or kinds[j] == BYTES:
            strs.append(_texts(buf, str_off[slots[j]], str_len[slots[j]], kinds[j] == STRING, keep[j], bad))
    return f64_arr, i64_arr, b8_arr, null_arr, strs, bad_arr


cdef object _texts(bytes buf, const int64_t[::1] off, const int64_t[::1] length, bint text, bint kept,
                   uint8_t[::1] bad):
    """One string or bytes column (None where null or bad); invalid UTF-8 marks the row bad, kept or not."""
    cdef Py_ssize_t n = off.shape[0], i
    cdef const char* d = PyBytes_AS_STRING(buf)
    if not kept and not text:
        return None
    col = np.empty(n, dtype=object)
    cdef object[::1] out = col
    for i in range(n):
        if bad[i] or length[i] < 0:
            continue
        if not text:
            out[i] = PyBytes_FromStringAndSize(d + off[i], length[i])
            continue
        try:
            value = PyUnicode_DecodeUTF8(d + off[i], length[i], NULL)
        except UnicodeDecodeError:
            bad[i] = 1
            continue
        if kept:
            out[i] = value
    return col if kept else None


cdef struct _Out:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef inline int _reserve(_Out* o, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef char* grown
    if o.size + extra <= o.cap:
        return 0
    cap = max(2 * o.cap, o.size + extra, 256)
    grown = <char*>realloc(o.data, cap)
    if grown == NULL:
        raise MemoryError()
    o.data = grown
    o.cap = cap
    return 0


cdef inline void _put_varint(_Out* o, int64_t value) noexcept:
    cdef uint64_t z = ((<uint64_t>value) << 1) ^ <uint64_t>(value >> 63)
    while z >= 0x80:
        o.data[o.size] = <char>((z & 0x7F) | 0x80)
        o.size += 1
        z >>= 7
    o.data[o.size] = <char>z
    o.size += 1


def write(bytes header, Py_ssize_t n, const int8_t[::1] kinds, const int8_t[::1] null_branches, list columns,
          list masks):
    """Encode ``n`` rows as ``header`` + the Avro body, byte for byte what fastavro writes.

    ``columns[j]``: a contiguous array of n values for numeric fields
    (float64 for double, float32 for float, int64, uint8 for boolean); for
    string and bytes fields a list of n objects (str, bytes or None). ``masks[j]``:
    a uint8 null mask of n values, or None (then a string field is null
    where its value is None).
    """
    cdef Py_ssize_t nf = kinds.shape[0], i, j
    cdef Py_ssize_t hlen = PyBytes_GET_SIZE(header)
    cdef const char* hdr = PyBytes_AS_STRING(header)
    cdef list out = [None] * n
    if n == 0:
        return out
    cdef const unsigned char[::1] raw
    cdef const unsigned char** data = <const unsigned char**>calloc(nf, sizeof(char*))
    cdef const unsigned char** null_at = <const unsigned char**>calloc(nf, sizeof(char*))
    cdef _Out o
    cdef bint is_null
    cdef int8_t kind
    cdef int64_t iv = 0
    cdef Py_ssize_t size = 0
    cdef const char* text
    cdef list col
    o.data = NULL
    o.size = 0
    o.cap = 0
    try:
        if data == NULL or null_at == NULL:
            raise MemoryError()
        if len(columns) != nf or len(masks) != nf or null_branches.shape[0] != nf:
            raise ValueError("one column and one mask per field")
        for j in range(nf):  # raw pointers into the arrays, which ``columns`` and ``masks`` keep alive
            if kinds[j] != STRING and kinds[j] != BYTES:
                raw = columns[j].view(np.uint8)
                if raw.shape[0] != n * (4 if kinds[j] == FLOAT else 1 if kinds[j] == BOOLEAN else 8):
                    raise ValueError(f"field {j}: {n} values of the field's dtype expected")
                data[j] = &raw[0]
            elif len(<list?>columns[j]) != n:
                raise ValueError(f"field {j}: {n} values expected")
            if masks[j] is not None:
                raw = masks[j]
                if raw.shape[0] != n:
                    raise ValueError(f"field {j}: a null mask of {n} values expected")
                null_at[j] = &raw[0]
        for i in range(n):
            o.size = 0
            _reserve(&o, hlen)
            memcpy(o.data, hdr, hlen)
            o.size = hlen
            for j in range(nf):
                kind = kinds[j]
                _reserve(&o, 11)
                if null_branches[j] >= 0:
                    if null_at[j] != NULL:
                        is_null = null_at[j][i] != 0
                    elif kind == STRING or kind == BYTES:
                        col = columns[j]
                        is_null = col[i] is None
                    else:
                        is_null = False
                    _put_varint(&o, null_branches[j] if is_null else 1 - null_branches[j])
                    if is_null:
                        continue
                if kind == DOUBLE:
                    memcpy(o.data + o.size, data[j] + 8 * i, 8)
                    o.size += 8
                elif kind == FLOAT:
                    memcpy(o.data + o.size, data[j] + 4 * i, 4)
                    o.size += 4
                elif kind == LONG:
                    memcpy(&iv, data[j] + 8 * i, 8)
                    _put_varint(&o, iv)
                elif kind == BOOLEAN:
                    o.data[o.size] = 1 if data[j][i] else 0
                    o.size += 1
                else:
                    col = columns[j]
                    value = col[i]
                    if isinstance(value, str):
                        text = PyUnicode_AsUTF8AndSize(value, &size)
                    else:
                        if isinstance(value, (bytearray, memoryview)):
                            value = bytes(value)
                        elif not isinstance(value, bytes):  # bytes(5) would be five zero bytes: refuse, as numpy does
                            raise TypeError(f"a string or bytes field got {type(value).__name__}")
                        text = PyBytes_AS_STRING(value)
                        size = PyBytes_GET_SIZE(value)
                    _put_varint(&o, size)
                    _reserve(&o, size)
                    memcpy(o.data + o.size, text, size)
                    o.size += size
            out[i] = PyBytes_FromStringAndSize(o.data, o.size)
    finally:
        free(o.data)
        free(data)
        free(null_at)
    return out
