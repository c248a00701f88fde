#!/bin/sh
echo octal
