/*
 * ats_wsi_jpeg: decode only the part of a JPEG tile a batch of patches needs,
 * straight into the patches, strictly.
 *
 *   decode_into(data, tables, rgb, out, pairs, verify=True) -> pixels decoded
 *
 * data    the tile's JPEG bytes (an abbreviated stream when the TIFF has tables)
 * tables  the TIFF's JPEGTables (a tables-only stream, read first) or None
 * rgb     True: the three components are R, G, B (Aperio: photometric RGB, no
 *         JFIF), as an Adobe transform-0 marker would say
 * out     writable uint8 buffer [n, h, w, 3] (pixel and channel contiguous)
 * pairs   sequence of (i, py0, py1, px0, px1, ty0, tx0): tile pixels from
 *         (ty0, tx0) fill rows py0:py1, cols px0:px1 of out[i]
 * verify  True: after the last needed row, entropy-decode the rest of the tile
 *         and read to its EOI, so that broken data anywhere in the tile raises
 *         (as a whole-tile decode does); False: stop after the last needed row
 *
 * Only the union box of the pairs is decoded: jpeg_crop_scanline to its iMCU
 * columns (one pixel of margin each side, so fancy upsampling sees the same
 * chroma neighbours as in a whole-tile decode), jpeg_skip_scanlines for the
 * rows above it (entropy decoding only), then the rows it spans: straight into
 * the patch when one pair takes every decoded column (a tile-aligned patch),
 * else through a scratch row copied to each pair.  Settings are
 * libjpeg's defaults (JDCT_ISLOW, fancy upsampling), as openslide uses, so the
 * pixels are those of a whole-tile decode.  Every libjpeg warning (corrupt
 * data, premature end) is an error: raises ats_wsi_jpeg.JpegError.  The GIL
 * is released while decoding.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>

static PyObject *JpegError;

struct strict_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void strict_exit(j_common_ptr cinfo)
{
    struct strict_error *err = (struct strict_error *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void strict_message(j_common_ptr cinfo, int level)
{
    if (level < 0) { /* a warning: corrupt data, premature end, ... */
        struct strict_error *err = (struct strict_error *)cinfo->err;
        (*cinfo->err->format_message)(cinfo, err->message);
        longjmp(err->jump, 1);
    }
}

typedef struct {
    Py_ssize_t i, py0, py1, px0, px1, ty0, tx0;
} pair_t;

typedef struct {
    const unsigned char *data, *tables;
    size_t data_len, tables_len;
    int rgb, verify;
    char *out;
    Py_ssize_t s0, s1; /* strides of out's first two axes */
    pair_t *pairs;
    Py_ssize_t n_pairs;
    long by0, by1, bx0, bx1; /* union box in tile pixels */
    long decoded; /* pixels run through the IDCT */
    char message[JMSG_LENGTH_MAX + 64];
} job_t;

/* returns 0 on success, -1 with job->message set */
static int run_decode(job_t *job)
{
    struct jpeg_decompress_struct cinfo;
    struct strict_error err;
    unsigned char *volatile scratch = NULL;
    JSAMPROW rows[16];
    volatile int created = 0;

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = strict_exit;
    err.pub.emit_message = strict_message;
    err.message[0] = 0;
    if (setjmp(err.jump)) {
        snprintf(job->message, sizeof(job->message), "%s", err.message[0] ? err.message : "libjpeg error");
        free(scratch);
        if (created)
            jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    created = 1;
    if (job->tables != NULL && job->tables_len > 0) {
        jpeg_mem_src(&cinfo, job->tables, (unsigned long)job->tables_len);
        if (jpeg_read_header(&cinfo, FALSE) != JPEG_HEADER_TABLES_ONLY) {
            snprintf(err.message, sizeof(err.message), "the JPEGTables are not a tables-only stream");
            longjmp(err.jump, 1);
        }
    }
    jpeg_mem_src(&cinfo, job->data, (unsigned long)job->data_len);
    if (jpeg_read_header(&cinfo, TRUE) != JPEG_HEADER_OK) {
        snprintf(err.message, sizeof(err.message), "no image in the tile's JPEG stream");
        longjmp(err.jump, 1);
    }
    if (cinfo.num_components == 3) {
        if (job->rgb)
            cinfo.jpeg_color_space = JCS_RGB;
    } else if (cinfo.num_components != 1) {
        snprintf(err.message, sizeof(err.message), "%d components (1 or 3 are read)", cinfo.num_components);
        longjmp(err.jump, 1);
    }
    cinfo.out_color_space = JCS_RGB; /* grey is replicated into R, G, B */
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != 3 || (long)cinfo.output_width < job->bx1 || (long)cinfo.output_height < job->by1) {
        snprintf(err.message, sizeof(err.message), "the tile decodes to %ux%u, smaller than the %ldx%ld needed",
                 cinfo.output_width, cinfo.output_height, job->bx1, job->by1);
        longjmp(err.jump, 1);
    }
    long full_w = (long)cinfo.output_width, full_h = (long)cinfo.output_height;
    JDIMENSION cx = (JDIMENSION)(job->bx0 > 0 ? job->bx0 - 1 : 0);
    long cend = job->bx1 + 1 < full_w ? job->bx1 + 1 : full_w;
    if (cend - (long)cx < 32) { /* a very narrow crop switches libjpeg to another (plain) upsampler */
        cend = (long)cx + 32 < full_w ? (long)cx + 32 : full_w;
        cx = (JDIMENSION)(cend - 32 > 0 ? cend - 32 : 0);
    }
    JDIMENSION cw = (JDIMENSION)(cend - (long)cx);
    if (cx > 0 || (long)cw < full_w)
        jpeg_crop_scanline(&cinfo, &cx, &cw); /* cx moves down to an iMCU boundary */
    long line_bytes = (long)cinfo.output_width * 3;
    int batch = cinfo.rec_outbuf_height > 0 ? cinfo.rec_outbuf_height : 1;
    if (batch < 8)
        batch = 8;
    if (batch > 16)
        batch = 16;
    scratch = (unsigned char *)malloc((size_t)line_bytes * (size_t)batch);
    if (scratch == NULL) {
        snprintf(err.message, sizeof(err.message), "out of memory");
        longjmp(err.jump, 1);
    }
    long y = 0;
    long start = job->by0 > 0 ? job->by0 - 1 : 0; /* one row of margin (vertical upsampling context) */
    if (start > 0)
        y = (long)jpeg_skip_scanlines(&cinfo, (JDIMENSION)start);
    /* one pair that takes every decoded column: libjpeg writes its rows into the patch itself */
    const pair_t *direct = NULL;
    if (job->n_pairs == 1 && (long)job->pairs[0].tx0 == (long)cx &&
        (long)(job->pairs[0].px1 - job->pairs[0].px0) == (long)cinfo.output_width)
        direct = &job->pairs[0];
    while (y < job->by1) {
        int want = batch;
        if (y < job->by0 && job->by0 - y < want)
            want = (int)(job->by0 - y); /* land exactly on by0 */
        int into_patch = direct != NULL && y >= job->by0;
        if (into_patch && job->by1 - y < want)
            want = (int)(job->by1 - y); /* no row past the pair: it would land in the next patch */
        for (int k = 0; k < want; k++)
            rows[k] = into_patch ? (JSAMPROW)(job->out + direct->i * job->s0 +
                                              (direct->py0 + y + k - direct->ty0) * job->s1 + direct->px0 * 3)
                                 : scratch + (size_t)k * (size_t)line_bytes;
        JDIMENSION got = jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)want);
        if (got == 0) {
            snprintf(err.message, sizeof(err.message), "no scanline returned at row %ld", y);
            longjmp(err.jump, 1);
        }
        if (into_patch) {
            y += (long)got;
            continue;
        }
        for (JDIMENSION k = 0; k < got; k++, y++) {
            if (y < job->by0 || y >= job->by1)
                continue;
            const unsigned char *line = rows[k];
            for (Py_ssize_t p = 0; p < job->n_pairs; p++) {
                const pair_t *q = &job->pairs[p];
                long r = y - (long)q->ty0;
                if (r < 0 || r >= (long)(q->py1 - q->py0))
                    continue;
                memcpy(job->out + q->i * job->s0 + (q->py0 + r) * job->s1 + q->px0 * 3,
                       line + ((long)q->tx0 - (long)cx) * 3, (size_t)(q->px1 - q->px0) * 3);
            }
        }
    }
    job->decoded = (long)cinfo.output_width * (y - start);
    if (job->verify) {
        long left = full_h - y;
        if (left > 1)
            jpeg_skip_scanlines(&cinfo, (JDIMENSION)(left - 1)); /* entropy-decodes them */
        if (left > 0) {
            JSAMPROW one = scratch;
            while (cinfo.output_scanline < cinfo.output_height)
                jpeg_read_scanlines(&cinfo, &one, 1);
        }
        jpeg_finish_decompress(&cinfo); /* reads to EOI: trailing garbage warns */
    } else {
        jpeg_abort_decompress(&cinfo);
    }
    free(scratch);
    scratch = NULL;
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

static PyObject *decode_into(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"data", "tables", "rgb", "out", "pairs", "verify", NULL};
    Py_buffer data = {0}, out = {0}, tables = {0};
    PyObject *tables_obj, *pairs_obj, *out_obj, *fast = NULL, *result = NULL;
    int rgb, verify = 1, have_tables = 0;
    job_t job;
    memset(&job, 0, sizeof(job));

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*OpOO|p:decode_into", kwlist, &data, &tables_obj, &rgb,
                                     &out_obj, &pairs_obj, &verify))
        return NULL;
    if (tables_obj != Py_None) {
        if (PyObject_GetBuffer(tables_obj, &tables, PyBUF_SIMPLE) < 0)
            goto done;
        have_tables = 1;
    }
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_RECORDS) < 0)
        goto done;
    if (out.ndim != 4 || out.itemsize != 1 || out.shape[3] != 3 || out.strides[3] != 1 || out.strides[2] != 3) {
        PyErr_SetString(PyExc_ValueError, "out must be uint8 [n, h, w, 3] with contiguous pixels");
        goto done;
    }
    fast = PySequence_Fast(pairs_obj, "pairs must be a sequence");
    if (fast == NULL)
        goto done;
    job.n_pairs = PySequence_Fast_GET_SIZE(fast);
    if (job.n_pairs == 0) {
        result = PyLong_FromLong(0);
        goto done;
    }
    job.pairs = (pair_t *)PyMem_Malloc(sizeof(pair_t) * (size_t)job.n_pairs);
    if (job.pairs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    job.by0 = job.bx0 = 1L << 30;
    job.by1 = job.bx1 = -1;
    for (Py_ssize_t p = 0; p < job.n_pairs; p++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, p);
        pair_t *q = &job.pairs[p];
        PyObject *seven = PySequence_Fast(item, "each pair must be a sequence");
        if (seven == NULL)
            goto done;
        Py_ssize_t v[7];
        int ok = PySequence_Fast_GET_SIZE(seven) == 7;
        for (int k = 0; ok && k < 7; k++) {
            v[k] = PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(seven, k), PyExc_OverflowError);
            if (v[k] == -1 && PyErr_Occurred())
                ok = 0;
        }
        Py_DECREF(seven);
        if (!ok) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "each pair must be 7 ints (i, py0, py1, px0, px1, ty0, tx0)");
            goto done;
        }
        q->i = v[0]; q->py0 = v[1]; q->py1 = v[2]; q->px0 = v[3]; q->px1 = v[4]; q->ty0 = v[5]; q->tx0 = v[6];
        if (q->i < 0 || q->i >= out.shape[0] || q->py0 < 0 || q->py1 <= q->py0 || q->py1 > out.shape[1] ||
            q->px0 < 0 || q->px1 <= q->px0 || q->px1 > out.shape[2] || q->ty0 < 0 || q->tx0 < 0) {
            PyErr_SetString(PyExc_ValueError, "a pair lies outside out or the tile");
            goto done;
        }
        long ty1 = (long)(q->ty0 + q->py1 - q->py0), tx1 = (long)(q->tx0 + q->px1 - q->px0);
        if ((long)q->ty0 < job.by0) job.by0 = (long)q->ty0;
        if ((long)q->tx0 < job.bx0) job.bx0 = (long)q->tx0;
        if (ty1 > job.by1) job.by1 = ty1;
        if (tx1 > job.bx1) job.bx1 = tx1;
    }
    job.data = (const unsigned char *)data.buf;
    job.data_len = (size_t)data.len;
    job.tables = have_tables ? (const unsigned char *)tables.buf : NULL;
    job.tables_len = have_tables ? (size_t)tables.len : 0;
    job.rgb = rgb;
    job.verify = verify;
    job.out = (char *)out.buf;
    job.s0 = out.strides[0];
    job.s1 = out.strides[1];
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_decode(&job);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_SetString(JpegError, job.message);
        goto done;
    }
    result = PyLong_FromLong(job.decoded);
done:
    if (job.pairs)
        PyMem_Free(job.pairs);
    Py_XDECREF(fast);
    if (out.obj)
        PyBuffer_Release(&out);
    if (have_tables)
        PyBuffer_Release(&tables);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *block_mean(PyObject *self, PyObject *args)
{
    Py_buffer src = {0}, dst = {0};
    int f;
    PyObject *src_obj, *dst_obj, *result = NULL;
    if (!PyArg_ParseTuple(args, "OiO:block_mean", &src_obj, &f, &dst_obj))
        return NULL;
    if (PyObject_GetBuffer(src_obj, &src, PyBUF_RECORDS_RO) < 0)
        return NULL;
    if (PyObject_GetBuffer(dst_obj, &dst, PyBUF_RECORDS) < 0)
        goto done;
    if (f < 1 || f > 64 || src.ndim != 4 || dst.ndim != 4 || src.itemsize != 1 || dst.itemsize != 1 ||
        src.shape[3] != 3 || dst.shape[3] != 3 || src.strides[3] != 1 || src.strides[2] != 3 ||
        dst.strides[3] != 1 || dst.strides[2] != 3 || src.shape[0] != dst.shape[0] ||
        src.shape[1] != dst.shape[1] * f || src.shape[2] != dst.shape[2] * f) {
        PyErr_SetString(PyExc_ValueError, "block_mean needs uint8 [n, f h, f w, 3] and [n, h, w, 3], contiguous pixels");
        goto done;
    }
    {
        Py_ssize_t n = dst.shape[0], h = dst.shape[1], w3 = dst.shape[2] * 3;
        const char *sb = (const char *)src.buf;
        char *db = (char *)dst.buf;
        Py_ssize_t ss0 = src.strides[0], ss1 = src.strides[1], ds0 = dst.strides[0], ds1 = dst.strides[1];
        unsigned int area = (unsigned int)(f * f), half = area / 2;
        unsigned int *acc = (unsigned int *)malloc(sizeof(unsigned int) * (size_t)w3);
        if (acc == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            if (f == 2) { /* the common 40x -> 20x case: no accumulator, shifts */
                for (Py_ssize_t y = 0; y < h; y++) {
                    const unsigned char *r0 = (const unsigned char *)(sb + i * ss0 + (2 * y) * ss1);
                    const unsigned char *r1 = (const unsigned char *)(sb + i * ss0 + (2 * y + 1) * ss1);
                    unsigned char *o = (unsigned char *)(db + i * ds0 + y * ds1);
                    for (Py_ssize_t x = 0; x < w3; x += 3) {
                        Py_ssize_t q = 2 * x;
                        o[x] = (unsigned char)((r0[q] + r0[q + 3] + r1[q] + r1[q + 3] + 2) >> 2);
                        o[x + 1] = (unsigned char)((r0[q + 1] + r0[q + 4] + r1[q + 1] + r1[q + 4] + 2) >> 2);
                        o[x + 2] = (unsigned char)((r0[q + 2] + r0[q + 5] + r1[q + 2] + r1[q + 5] + 2) >> 2);
                    }
                }
                continue;
            }
            for (Py_ssize_t y = 0; y < h; y++) {
                for (Py_ssize_t k = 0; k < w3; k++)
                    acc[k] = half;
                for (int dy = 0; dy < f; dy++) {
                    const unsigned char *row = (const unsigned char *)(sb + i * ss0 + (y * f + dy) * ss1);
                    if (f == 2) {
                        for (Py_ssize_t x = 0; x < w3; x += 3) {
                            const unsigned char *p = row + 2 * x;
                            acc[x] += p[0] + p[3];
                            acc[x + 1] += p[1] + p[4];
                            acc[x + 2] += p[2] + p[5];
                        }
                    } else {
                        for (Py_ssize_t x = 0; x < w3; x += 3) {
                            const unsigned char *p = row + (Py_ssize_t)f * x;
                            for (int dx = 0; dx < f; dx++, p += 3) {
                                acc[x] += p[0];
                                acc[x + 1] += p[1];
                                acc[x + 2] += p[2];
                            }
                        }
                    }
                }
                unsigned char *o = (unsigned char *)(db + i * ds0 + y * ds1);
                for (Py_ssize_t k = 0; k < w3; k++)
                    o[k] = (unsigned char)(acc[k] / area);
            }
        }
        Py_END_ALLOW_THREADS
        free(acc);
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    if (dst.obj)
        PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    return result;
}

static PyMethodDef methods[] = {
    {"block_mean", block_mean, METH_VARARGS,
     "block_mean(region, f, out): exact f x f block mean of uint8 [n, f h, f w, 3] into [n, h, w, 3],\n"
     "rounded half up ((sum + f*f // 2) // (f*f)). Releases the GIL."},
    {"decode_into", (PyCFunction)(void (*)(void))decode_into, METH_VARARGS | METH_KEYWORDS,
     "decode_into(data, tables, rgb, out, pairs, verify=True) -> pixels decoded\n\n"
     "Decode the union box of ``pairs`` of one JPEG tile straight into ``out``\n"
     "(uint8 [n, h, w, 3]); each pair (i, py0, py1, px0, px1, ty0, tx0) puts tile\n"
     "pixels from (ty0, tx0) into out[i, py0:py1, px0:px1]. libjpeg warnings raise\n"
     "JpegError. Releases the GIL."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ats_wsi_jpeg",
                                    "Cropped, strict libjpeg-turbo decoding of JPEG tiles into patch buffers.", -1,
                                    methods};

PyMODINIT_FUNC PyInit_ats_wsi_jpeg(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    JpegError = PyErr_NewException("ats_wsi_jpeg.JpegError", PyExc_ValueError, NULL);
    if (JpegError == NULL || PyModule_AddObject(m, "JpegError", JpegError) < 0) {
        Py_XDECREF(JpegError);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "LIBJPEG_VERSION", JPEG_LIB_VERSION);
    return m;
}
