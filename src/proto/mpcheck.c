/* placeholder: implemented in progress */
typedef int cw_placeholder_mpcheck;
