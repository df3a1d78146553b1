// A C API over libsentencepiece's C++ SentencePieceProcessor and trainer.
// Swift's C++ interop cannot import SentencePieceProcessor (neither copyable nor movable), so Swift sees
// only an opaque handle. Functions that can fail return 0 on success and write a message into `err`.
#ifndef LLAMAPROBE_SPM_C_H
#define LLAMAPROBE_SPM_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct spm_processor spm_processor;

/// Loads a serialized ModelProto from memory. Returns NULL and fills `err` on failure.
spm_processor *spm_load_from_bytes(const char *data, size_t len, char *err, size_t errlen);
void spm_free(spm_processor *p);

/// Encodes UTF-8 `text` (not NUL-terminated) to ids. Writes at most `cap` ids into `out`, sets `*n` to the
/// full count. Returns 0 on success (even when `*n > cap`: call again with a larger buffer).
int spm_encode(const spm_processor *p, const char *text, size_t len, int32_t *out, size_t cap, size_t *n,
               char *err, size_t errlen);
/// Decodes ids to UTF-8 into `out` (capacity `cap`), sets `*n` to the full byte length.
int spm_decode(const spm_processor *p, const int32_t *ids, size_t count, char *out, size_t cap, size_t *n,
               char *err, size_t errlen);

int spm_piece_size(const spm_processor *p);
/// The piece for `id` as a NUL-terminated string owned by the processor (valid while it lives).
const char *spm_id_to_piece(const spm_processor *p, int id);
int spm_piece_to_id(const spm_processor *p, const char *piece, size_t len);
float spm_get_score(const spm_processor *p, int id);
int spm_is_unknown(const spm_processor *p, int id);
int spm_is_control(const spm_processor *p, int id);
int spm_is_byte(const spm_processor *p, int id);
int spm_bos_id(const spm_processor *p);
int spm_eos_id(const spm_processor *p);
int spm_unk_id(const spm_processor *p);
int spm_pad_id(const spm_processor *p);

/// Runs the SentencePiece trainer with a command-line style argument string
/// (e.g. "--input=corpus.txt --model_prefix=/tmp/m --vocab_size=512 --model_type=bpe").
int spm_train(const char *args, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
