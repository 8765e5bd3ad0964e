// bench only: wetty runs its command directly for root on localhost, else it ssh-es there.
process.getuid = () => 0;
