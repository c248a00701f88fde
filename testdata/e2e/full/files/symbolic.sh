#!/bin/sh
echo symbolic
