#include "spm_c.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

struct spm_processor {
    sentencepiece::SentencePieceProcessor sp;
};

static void set_err(char *err, size_t errlen, const std::string &msg) {
    if (err == nullptr || errlen == 0) return;
    size_t n = msg.size() < errlen - 1 ? msg.size() : errlen - 1;
    std::memcpy(err, msg.data(), n);
    err[n] = '\0';
}

// libsentencepiece reports most bad models through its status, but some (a zero-length piece: darts_clone's
// "failed to insert key") throw a C++ exception, which must not cross into Swift: every entry point catches.
#define SPM_CATCH(fail)                                                                  \
    catch (const std::exception &e) { set_err(err, errlen, std::string("invalid model: ") + e.what()); fail; } \
    catch (...) { set_err(err, errlen, "invalid model: unknown C++ exception"); fail; }

extern "C" spm_processor *spm_load_from_bytes(const char *data, size_t len, char *err, size_t errlen) {
    auto *p = new spm_processor();
    try {
        auto status = p->sp.LoadFromSerializedProto(std::string(data, len));
        if (!status.ok()) {
            set_err(err, errlen, status.ToString());
            delete p;
            return nullptr;
        }
    } SPM_CATCH(delete p; return nullptr)
    return p;
}

extern "C" void spm_free(spm_processor *p) { delete p; }

extern "C" int spm_encode(const spm_processor *p, const char *text, size_t len, int32_t *out, size_t cap,
                          size_t *n, char *err, size_t errlen) {
    std::vector<int> ids;
    try {
        auto status = p->sp.Encode(std::string(text, len), &ids);
        if (!status.ok()) {
            set_err(err, errlen, status.ToString());
            return 1;
        }
    } SPM_CATCH(return 1)
    *n = ids.size();
    for (size_t i = 0; i < ids.size() && i < cap; ++i) out[i] = ids[i];
    return 0;
}

extern "C" int spm_decode(const spm_processor *p, const int32_t *ids, size_t count, char *out, size_t cap,
                          size_t *n, char *err, size_t errlen) {
    std::vector<int> v(ids, ids + count);
    std::string text;
    try {
        auto status = p->sp.Decode(v, &text);
        if (!status.ok()) {
            set_err(err, errlen, status.ToString());
            return 1;
        }
    } SPM_CATCH(return 1)
    *n = text.size();
    std::memcpy(out, text.data(), text.size() < cap ? text.size() : cap);
    return 0;
}

extern "C" int spm_piece_size(const spm_processor *p) { return p->sp.GetPieceSize(); }
extern "C" const char *spm_id_to_piece(const spm_processor *p, int id) { return p->sp.IdToPiece(id).c_str(); }
extern "C" int spm_piece_to_id(const spm_processor *p, const char *piece, size_t len) {
    return p->sp.PieceToId(std::string(piece, len));
}
extern "C" float spm_get_score(const spm_processor *p, int id) { return p->sp.GetScore(id); }
extern "C" int spm_is_unknown(const spm_processor *p, int id) { return p->sp.IsUnknown(id) ? 1 : 0; }
extern "C" int spm_is_control(const spm_processor *p, int id) { return p->sp.IsControl(id) ? 1 : 0; }
extern "C" int spm_is_byte(const spm_processor *p, int id) { return p->sp.IsByte(id) ? 1 : 0; }
extern "C" int spm_bos_id(const spm_processor *p) { return p->sp.bos_id(); }
extern "C" int spm_eos_id(const spm_processor *p) { return p->sp.eos_id(); }
extern "C" int spm_unk_id(const spm_processor *p) { return p->sp.unk_id(); }
extern "C" int spm_pad_id(const spm_processor *p) { return p->sp.pad_id(); }

// Exported by libsentencepiece (logging.h is not installed): the level below which LOG(...) is dropped.
namespace sentencepiece { namespace logging { void SetMinLogLevel(int v); } }

extern "C" int spm_train(const char *args, char *err, size_t errlen) {
    // The trainer logs its command line (LOG(INFO)) before it reads --minloglevel: raise the level first.
    // (This used to point fd 2 at /dev/null around the call. Two trainings on two threads could then save
    // and restore each other's redirection and leave the whole process's stderr on /dev/null: the test
    // runner's output stopped mid-run, exit status 0.)
    sentencepiece::logging::SetMinLogLevel(2);
    auto status = sentencepiece::SentencePieceTrainer::Train(args);
    if (!status.ok()) {
        set_err(err, errlen, status.ToString());
        return 1;
    }
    return 0;
}
