"""dealership: the reference REST service built on hybridcache."""
