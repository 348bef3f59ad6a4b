/* The constants mpi-sys does not export, and the implementation whose
 * header this file was compiled against (see build.rs). */
#include <stddef.h>
#include <mpi.h>

void *const mfio_mpi_in_place = MPI_IN_PLACE;
void *const mfio_mpi_bottom = MPI_BOTTOM;

#if defined(OPEN_MPI)
const char mfio_mpi_header_impl[] = "Open MPI";
#elif defined(MPICH_VERSION)
const char mfio_mpi_header_impl[] = "MPICH";
#else
const char mfio_mpi_header_impl[] = "";
#endif

const int mfio_mpi_header_version = MPI_VERSION;

/* Error classes and keyvals, which are macros or enum values whose
 * spelling differs between implementations. */
/* The standard fixes MPI_SUCCESS at 0 (MPI-4.0, 9.4: "0 = MPI_SUCCESS <
 * MPI_ERR_... <= MPI_ERR_LASTCODE"); the Rust side compares return codes
 * with 0 rather than load a constant at every call. */
_Static_assert(MPI_SUCCESS == 0, "MPI_SUCCESS must be 0");
const int mfio_mpi_err_in_status = MPI_ERR_IN_STATUS;
const int mfio_mpi_err_pending = MPI_ERR_PENDING;
const int mfio_mpi_err_truncate = MPI_ERR_TRUNCATE;
const int mfio_mpi_err_rank = MPI_ERR_RANK;
const int mfio_mpi_err_tag = MPI_ERR_TAG;
const int mfio_mpi_err_count = MPI_ERR_COUNT;
const int mfio_mpi_err_buffer = MPI_ERR_BUFFER;
const int mfio_mpi_err_type = MPI_ERR_TYPE;
const int mfio_mpi_err_op = MPI_ERR_OP;
const int mfio_mpi_err_comm = MPI_ERR_COMM;
const int mfio_mpi_err_arg = MPI_ERR_ARG;
const int mfio_mpi_err_other = MPI_ERR_OTHER;
const int mfio_mpi_err_intern = MPI_ERR_INTERN;
const int mfio_mpi_tag_ub_keyval = MPI_TAG_UB;
const int mfio_mpi_keyval_invalid = MPI_KEYVAL_INVALID;

/* A type keyval without copy or delete callbacks; the null callbacks are
 * implementation-specific symbols behind macros. */
int mfio_mpi_type_keyval(int *keyval) {
    return MPI_Type_create_keyval(MPI_TYPE_NULL_COPY_FN, MPI_TYPE_NULL_DELETE_FN, keyval, NULL);
}

/* The null operation, passed where a call takes no operation. */
const MPI_Op mfio_mpi_op_null = MPI_OP_NULL;
